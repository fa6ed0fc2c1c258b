//! Property tests: generated nested values of every kind round-trip exactly,
//! and the output interoperates with serde-lexpr where serde-lexpr is correct.

use std::collections::{BTreeMap, BTreeSet};

use atomsync_core::sexpr;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// An f64 compared by its bits (NaN payloads are normalised by the strategy:
/// the text format keeps NaN and its sign, not its payload).
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
#[serde(transparent)]
struct Bits(f64);

impl PartialEq for Bits {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
#[serde(transparent)]
struct Bits32(f32);

impl PartialEq for Bits32 {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Leaf {
    b: bool,
    i: i64,
    // serde buffers internally tagged, untagged and flattened data in a type
    // without 128-bit integers (in any format), so the nested leaves have
    // none; `wide_integers_round_trip` covers i128/u128.
    u: u64,
    n: i32,
    f: Bits,
    g: Bits32,
    c: char,
    s: String,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
    oo: Option<Option<u8>>,
    unit: (),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Wrapper(Box<Doc>);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Marker;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind")]
enum Tagged {
    Empty,
    Named { label: String, inner: Box<Doc> },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "t", content = "c")]
enum Adjacent {
    One(Box<Doc>),
    Two(i8, String),
    Three { x: Option<String> },
    Four,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
enum Loose {
    Number(i64),
    Text(String),
    Record { id: u32, tags: BTreeSet<String> },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Flat {
    id: u16,
    #[serde(flatten)]
    rest: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Doc {
    Leaf(Leaf),
    Marker(Marker),
    Unit,
    List(Vec<Doc>),
    Tuple(Box<Doc>, i32),
    Map(BTreeMap<String, Doc>),
    KeyedByTuple(BTreeMap<(i8, bool), Doc>),
    Opt(Option<Box<Doc>>),
    Wrapped(Wrapper),
    Struct {
        a: Box<Doc>,
        #[serde(rename = "weird name|\u{7}")]
        b: Option<Box<Doc>>,
    },
    Tagged(Tagged),
    Adjacent(Adjacent),
    Loose(Loose),
    Flat(Flat),
}

fn f64_bits() -> impl Strategy<Value = Bits> {
    any::<u64>().prop_map(|bits| {
        let f = f64::from_bits(bits);
        Bits(if f.is_nan() { f64::NAN.copysign(f) } else { f })
    })
}

fn f32_bits() -> impl Strategy<Value = Bits32> {
    any::<u32>().prop_map(|bits| {
        let f = f32::from_bits(bits);
        Bits32(if f.is_nan() { f32::NAN.copysign(f) } else { f })
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z \"\\\\()|;#.]{0,12}"]
}

fn leaf() -> impl Strategy<Value = Leaf> {
    (
        (any::<bool>(), any::<i64>(), any::<u64>(), any::<i32>()),
        (f64_bits(), f32_bits(), any::<char>(), text()),
        (
            proptest::collection::vec(any::<u8>(), 0..8),
            any::<Option<Option<u8>>>(),
        ),
    )
        .prop_map(|((b, i, u, n), (f, g, c, s), (bytes, oo))| Leaf {
            b,
            i,
            u,
            n,
            f,
            g,
            c,
            s,
            bytes,
            oo,
            unit: (),
        })
}

fn doc() -> impl Strategy<Value = Doc> {
    let base = prop_oneof![
        leaf().prop_map(Doc::Leaf),
        Just(Doc::Marker(Marker)),
        Just(Doc::Unit),
        Just(Doc::Tagged(Tagged::Empty)),
        Just(Doc::Adjacent(Adjacent::Four)),
        (any::<i8>(), text()).prop_map(|(a, b)| Doc::Adjacent(Adjacent::Two(a, b))),
        proptest::option::of(text()).prop_map(|x| Doc::Adjacent(Adjacent::Three { x })),
        any::<i64>().prop_map(|n| Doc::Loose(Loose::Number(n))),
        text().prop_map(|s| Doc::Loose(Loose::Text(s))),
        (any::<u32>(), proptest::collection::btree_set(text(), 0..3))
            .prop_map(|(id, tags)| Doc::Loose(Loose::Record { id, tags })),
        (
            any::<u16>(),
            proptest::collection::btree_map("[a-z]{1,5}", text(), 0..3)
        )
            .prop_map(|(id, rest)| Doc::Flat(Flat {
                id,
                rest: rest.into_iter().filter(|(k, _)| k != "id").collect()
            })),
    ];
    base.prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Doc::List),
            (inner.clone(), any::<i32>()).prop_map(|(d, n)| Doc::Tuple(Box::new(d), n)),
            // Empty maps are `()` as in serde-lexpr, which serde's buffering for
            // tagged/untagged/flattened data reads as unit; typed positions
            // (see tests/codec.rs) take them fine.
            proptest::collection::btree_map(text(), inner.clone(), 1..3).prop_map(Doc::Map),
            proptest::collection::btree_map(any::<(i8, bool)>(), inner.clone(), 1..3)
                .prop_map(Doc::KeyedByTuple),
            proptest::option::of(inner.clone()).prop_map(|d| Doc::Opt(d.map(Box::new))),
            inner
                .clone()
                .prop_map(|d| Doc::Wrapped(Wrapper(Box::new(d)))),
            (inner.clone(), proptest::option::of(inner.clone())).prop_map(|(a, b)| {
                Doc::Struct {
                    a: Box::new(a),
                    b: b.map(Box::new),
                }
            }),
            (text(), inner.clone()).prop_map(|(label, d)| Doc::Tagged(Tagged::Named {
                label,
                inner: Box::new(d)
            })),
            inner.prop_map(|d| Doc::Adjacent(Adjacent::One(Box::new(d)))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_generated_value_round_trips_canonically(d in doc()) {
        let text = sexpr::to_string(&d).unwrap();
        let back: Doc = sexpr::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("{e} in {text}")))?;
        prop_assert_eq!(&back, &d);
        prop_assert_eq!(sexpr::to_string(&back).unwrap(), text.clone());
        let from_bytes: Doc = sexpr::from_slice(text.as_bytes()).unwrap();
        prop_assert_eq!(from_bytes, d);
        // Any datum can be carried as Raw without changing it.
        let raw = sexpr::Raw::from_text(&text).unwrap();
        prop_assert_eq!(raw.as_str(), text.as_str());
    }

    #[test]
    fn wide_integers_round_trip(
        u in any::<u128>(),
        i in any::<i128>(),
        m in proptest::collection::btree_map(any::<u128>(), any::<i128>(), 0..4),
    ) {
        let text = sexpr::to_string(&(u, i, &m)).unwrap();
        let back: (u128, i128, BTreeMap<u128, i128>) = sexpr::from_str(&text).unwrap();
        prop_assert_eq!(back, (u, i, m));
    }

    #[test]
    fn every_f64_bit_pattern_round_trips(bits in any::<u64>()) {
        let f = f64::from_bits(bits);
        let back: f64 = sexpr::from_str(&sexpr::to_string(&f).unwrap()).unwrap();
        if f.is_nan() {
            prop_assert!(back.is_nan());
            prop_assert_eq!(back.is_sign_negative(), f.is_sign_negative());
        } else {
            prop_assert_eq!(back.to_bits(), bits);
        }
    }

    #[test]
    fn every_f32_bit_pattern_round_trips(bits in any::<u32>()) {
        let f = f32::from_bits(bits);
        let back: f32 = sexpr::from_str(&sexpr::to_string(&f).unwrap()).unwrap();
        if f.is_nan() {
            prop_assert!(back.is_nan());
        } else {
            prop_assert_eq!(back.to_bits(), bits);
        }
    }

    #[test]
    fn arbitrary_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = sexpr::from_slice::<Doc>(&input);
        let _ = sexpr::from_slice::<serde::de::IgnoredAny>(&input);
        if let Ok(s) = std::str::from_utf8(&input) {
            let _ = sexpr::Raw::from_text(s);
        }
    }
}

// ---------------------------------------------------------------- interop

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Shape {
    Point,
    Circle(i32),
    Rect(u16, u16),
    Poly { sides: u8, closed: bool },
}

/// Types serde-lexpr handles correctly: plain structs, lists, options,
/// externally tagged enums, string-keyed maps, integers, and floats that
/// lexpr prints and reads exactly.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Common {
    name: String,
    done: bool,
    count: i64,
    small: u8,
    ratio: f64,
    tags: Vec<String>,
    due: Option<i64>,
    shape: Shape,
    shapes: Vec<Shape>,
    scores: BTreeMap<String, i32>,
    initial: char,
    pair: (u8, String),
}

fn common() -> impl Strategy<Value = Common> {
    let shape = prop_oneof![
        Just(Shape::Point),
        any::<i32>().prop_map(Shape::Circle),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Shape::Rect(a, b)),
        (any::<u8>(), any::<bool>()).prop_map(|(sides, closed)| Shape::Poly { sides, closed }),
    ];
    (
        (
            "[ -~]{0,16}",
            any::<bool>(),
            any::<i64>(),
            any::<u8>(),
            -4000i32..4000,
        ),
        (
            proptest::collection::vec("[a-z0-9 ]{0,6}", 0..4),
            any::<Option<i64>>(),
            shape.clone(),
            proptest::collection::vec(shape, 0..3),
        ),
        (
            proptest::collection::btree_map("[a-z]{1,6}", any::<i32>(), 0..4),
            proptest::char::range('a', 'z'),
            (any::<u8>(), "[a-z]{0,5}"),
        ),
    )
        .prop_map(
            |(
                (name, done, count, small, quarter),
                (tags, due, shape, shapes),
                (scores, initial, pair),
            )| Common {
                name,
                done,
                count,
                small,
                ratio: f64::from(quarter) / 4.0,
                tags,
                due,
                shape,
                shapes,
                scores,
                initial,
                pair,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn serde_lexpr_reads_our_output(c in common()) {
        let text = sexpr::to_string(&c).unwrap();
        let theirs: Common = serde_lexpr::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("serde-lexpr: {e} in {text}")))?;
        prop_assert_eq!(theirs, c);
    }

    #[test]
    fn we_read_serde_lexprs_output(c in common()) {
        let text = serde_lexpr::to_string(&c).unwrap();
        let ours: Common = sexpr::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("{e} in {text}")))?;
        prop_assert_eq!(ours, c);
    }
}
