//! Round trips, canonical output, error positions and limits of the
//! S-expression codec.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;

use atomsync_core::sexpr::{self, Category, Raw};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) -> String {
    let text = sexpr::to_string(value).expect("encode");
    let back: T = sexpr::from_str(&text).unwrap_or_else(|e| panic!("decode {text:?}: {e}"));
    assert_eq!(&back, value, "round trip of {text}");
    let again = sexpr::to_string(&back).expect("encode again");
    assert_eq!(again, text, "canonical output");
    text
}

#[test]
fn scalars_have_lexpr_syntax() {
    assert_eq!(round_trip(&true), "#t");
    assert_eq!(round_trip(&false), "#f");
    assert_eq!(round_trip(&-42i64), "-42");
    assert_eq!(
        round_trip(&u128::MAX),
        "340282366920938463463374607431768211455"
    );
    assert_eq!(
        round_trip(&i128::MIN),
        "-170141183460469231731687303715884105728"
    );
    assert_eq!(round_trip(&1.5f64), "1.5");
    assert_eq!(round_trip(&1e16f64), "1e16");
    assert_eq!(round_trip(&f64::INFINITY), "+inf.0");
    assert_eq!(round_trip(&f64::NEG_INFINITY), "-inf.0");
    assert_eq!(round_trip(&'a'), "#\\a");
    assert_eq!(round_trip(&'('), "#\\(");
    assert_eq!(round_trip(&'\n'), "#\\xa");
    assert_eq!(round_trip(&'😀'), "#\\x1f600");
    assert_eq!(
        round_trip(&"a\"b\\c\n\u{1}é".to_owned()),
        r#""a\"b\\c\n\x1;é""#
    );
    assert_eq!(round_trip(&()), "()");
}

#[test]
fn floats_keep_every_bit() {
    let specials = [
        0.0,
        -0.0,
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        f64::EPSILON,
        5e-324,
        -5e-324,
        1e-7,
        1e300,
        0.1 + 0.2,
        f64::from_bits(0x000f_ffff_ffff_ffff),
    ];
    for v in specials {
        let text = sexpr::to_string(&v).unwrap();
        let back: f64 = sexpr::from_str(&text).unwrap();
        assert_eq!(back.to_bits(), v.to_bits(), "{text}");
    }
    for v in [f64::NAN, -f64::NAN] {
        let back: f64 = sexpr::from_str(&sexpr::to_string(&v).unwrap()).unwrap();
        assert!(back.is_nan());
        assert_eq!(back.is_sign_negative(), v.is_sign_negative());
    }
    for v in [
        0.1f32,
        -0.0,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-45,
        16_777_217.0,
    ] {
        let back: f32 = sexpr::from_str(&sexpr::to_string(&v).unwrap()).unwrap();
        assert_eq!(back.to_bits(), v.to_bits());
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Unit;

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Newtype(i32);

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Pair(String, u8);

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum External {
    Unit,
    Newtype(Option<u32>),
    Tuple(i8, String),
    Struct { a: bool, b: Vec<u16> },
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
#[serde(tag = "type")]
enum Internal {
    Plain,
    Data {
        x: f64,
        name: String,
        tags: BTreeSet<String>,
    },
    Wrapped(Inner),
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
#[serde(tag = "t", content = "c")]
enum Adjacent {
    Unit,
    Newtype(String),
    Tuple(u8, u8),
    Struct {
        when: i64,
        maybe: Option<Option<i8>>,
    },
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
#[serde(untagged)]
enum Untagged {
    Int(i64),
    Text(String),
    Record { id: u32, label: Option<String> },
    List(Vec<i32>),
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Inner {
    depth: u8,
    note: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Flattened {
    id: u64,
    #[serde(flatten)]
    inner: Inner,
    #[serde(flatten)]
    extra: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Renamed {
    #[serde(rename = "with space")]
    a: u8,
    #[serde(rename = "1starts-with-digit")]
    b: u8,
    #[serde(rename = "|pipe\\back")]
    c: u8,
    #[serde(rename = "")]
    d: u8,
    #[serde(rename = "ünï\ncode")]
    e: u8,
    #[serde(rename = "-")]
    f: u8,
}

#[test]
fn structs_options_and_externally_tagged_enums() {
    assert_eq!(round_trip(&Unit), "()");
    assert_eq!(round_trip(&Newtype(-3)), "-3");
    assert_eq!(round_trip(&Pair("x".into(), 7)), "#(\"x\" 7)");
    assert_eq!(round_trip(&Some(5u8)), "(5)");
    assert_eq!(round_trip(&None::<u8>), "()");
    assert_eq!(round_trip(&Some(None::<u8>)), "(())");
    assert_eq!(round_trip(&Some(Some(1u8))), "((1))");
    assert_eq!(round_trip(&None::<Option<u8>>), "()");
    assert_eq!(round_trip(&External::Unit), "Unit");
    assert_eq!(round_trip(&External::Newtype(Some(3))), "(Newtype . (3))");
    assert_eq!(round_trip(&External::Newtype(None)), "(Newtype . ())");
    assert_eq!(
        round_trip(&External::Tuple(-1, "s".into())),
        "(Tuple -1 \"s\")"
    );
    assert_eq!(
        round_trip(&External::Struct {
            a: true,
            b: vec![1, 2]
        }),
        "(Struct . ((a . #t) (b . #(1 2))))"
    );
    assert_eq!(round_trip(&vec![Unit, Unit]), "#(() ())");
    assert_eq!(round_trip(&Vec::<u8>::new()), "#()");
    assert_eq!(
        round_trip(&serde_bytes::ByteBuf::from(vec![0u8, 255, 7])),
        "#u8(0 255 7)"
    );
}

#[test]
fn maps_with_non_string_keys() {
    let mut m = BTreeMap::new();
    m.insert((1u8, -2i32), Some("a".to_owned()));
    m.insert((3, 4), None);
    assert_eq!(round_trip(&m), "((#(1 -2) . (\"a\")) (#(3 4) . ()))");
    let mut by_enum = BTreeMap::new();
    by_enum.insert(Some(true), vec!['x']);
    by_enum.insert(None, vec![]);
    round_trip(&by_enum);
    let mut nested: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    nested.insert("k".into(), [(1, 0.5), (-1, -0.0)].into());
    round_trip(&nested);
}

#[test]
fn all_four_enum_representations_and_flatten() {
    for v in [
        Internal::Plain,
        Internal::Data {
            x: -0.0,
            name: "n".into(),
            tags: ["a".to_owned(), "b".to_owned()].into(),
        },
        Internal::Wrapped(Inner {
            depth: 3,
            note: Some("deep".into()),
        }),
        Internal::Wrapped(Inner {
            depth: 0,
            note: None,
        }),
    ] {
        round_trip(&v);
    }
    for v in [
        Adjacent::Unit,
        Adjacent::Newtype("x".into()),
        Adjacent::Tuple(1, 2),
        Adjacent::Struct {
            when: -5,
            maybe: Some(None),
        },
        Adjacent::Struct {
            when: 5,
            maybe: Some(Some(-1)),
        },
        Adjacent::Struct {
            when: 0,
            maybe: None,
        },
    ] {
        round_trip(&v);
    }
    for v in [
        Untagged::Int(-9),
        Untagged::Text("t".into()),
        Untagged::Record {
            id: 4,
            label: Some("l".into()),
        },
        Untagged::Record { id: 4, label: None },
        Untagged::List(vec![1, 2, 3]),
        Untagged::List(vec![]),
    ] {
        round_trip(&v);
    }
    let f = Flattened {
        id: 1,
        inner: Inner {
            depth: 2,
            note: Some("n".into()),
        },
        extra: [("color".to_owned(), "red".to_owned())].into(),
    };
    round_trip(&f);
    round_trip(&Flattened {
        id: 2,
        inner: Inner {
            depth: 0,
            note: None,
        },
        extra: BTreeMap::new(),
    });
}

#[test]
fn field_renames_of_any_text() {
    let text = round_trip(&Renamed {
        a: 1,
        b: 2,
        c: 3,
        d: 4,
        e: 5,
        f: 6,
    });
    assert!(text.contains("(|with space| . 1)"), "{text}");
    assert!(text.contains(r"(|\|pipe\\back| . 3)"), "{text}");
}

#[test]
fn reads_elided_pairs_comments_and_named_chars() {
    #[derive(Deserialize, Debug, PartialEq)]
    struct S {
        a: Option<u8>,
        b: Option<u8>,
        c: Vec<u8>,
        d: char,
        e: External,
    }
    let s: S = sexpr::from_str(
        "; a comment\n((a 1) (b) #| block |# (c 1 2) (d . #\\space) (e Newtype 3))",
    )
    .unwrap();
    assert_eq!(
        s,
        S {
            a: Some(1),
            b: None,
            c: vec![1, 2],
            d: ' ',
            e: External::Newtype(Some(3))
        }
    );
    let b: bool = sexpr::from_str("#true").unwrap();
    assert!(b);
    let unit: () = sexpr::from_str("#nil").unwrap();
    assert_eq!(unit, ());
}

#[test]
fn errors_say_what_and_where() {
    let e = sexpr::from_str::<Vec<u8>>("#(1 2\n  x)").unwrap_err();
    assert_eq!((e.line(), e.column()), (Some(2), Some(3)), "{e}");
    assert!(e.to_string().contains("line 2 column 3"), "{e}");

    let e = sexpr::from_str::<Vec<u8>>("#(1 2").unwrap_err();
    assert_eq!(e.category(), Category::Eof);

    let e = sexpr::from_str::<u8>("300").unwrap_err();
    assert_eq!(e.category(), Category::Data);
    assert!(e.to_string().contains("300"), "{e}");

    let e = sexpr::from_str::<String>("\"abc").unwrap_err();
    assert!(e.to_string().contains("unterminated string"), "{e}");

    let e = sexpr::from_str::<u8>("1 2").unwrap_err();
    assert!(e.to_string().contains("trailing"), "{e}");

    let e = sexpr::from_slice::<String>(b"\"\xff\"").unwrap_err();
    assert!(e.to_string().contains("UTF-8"), "{e}");

    let e = sexpr::from_str::<String>(r#""\xd800;""#).unwrap_err();
    assert!(e.to_string().contains("Unicode scalar"), "{e}");
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Nest {
    child: Option<Box<Nest>>,
}

fn nest(depth: usize) -> Nest {
    let mut n = Nest { child: None };
    for _ in 0..depth {
        n = Nest {
            child: Some(Box::new(n)),
        };
    }
    n
}

fn on_small_stack<F: FnOnce() + Send + 'static>(f: F) {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .expect("ran on a 2 MiB stack");
}

#[test]
fn deep_documents_round_trip_on_a_2mib_stack() {
    on_small_stack(|| {
        // Each level is a struct, a pair and an option: three lists.
        let n = nest(80);
        round_trip(&n);
        let mut v = serde_json::json!(0);
        for _ in 0..200 {
            v = serde_json::json!([v]);
        }
        let text = sexpr::to_string(&v).unwrap();
        let back: serde_json::Value = sexpr::from_str(&text).unwrap();
        assert_eq!(back, v);
        let mut deep: Vec<Vec<u8>> = vec![vec![1]];
        for _ in 0..3 {
            deep.push(vec![]);
        }
        round_trip(&deep);
    });
}

/// A document value has a depth of its own (`VALUE_MAX_DEPTH`), the same
/// alone and inside a message: a chain of 300 nested structs (900 levels)
/// encodes, travels in a push and decodes on a 2 MiB stack; deeper is an
/// error, never a crash.
#[test]
fn document_values_have_a_depth_of_their_own() {
    use atomsync_core::protocol::{Change, PushRequest};
    on_small_stack(|| {
        let chain = nest(300);
        let value = Raw::from_value(&chain).unwrap();
        let push = PushRequest {
            group: "g".to_owned(),
            client_id: "c".to_owned(),
            changes: vec![Change {
                mutation: 1,
                key: "deep".to_owned(),
                base_version: 0,
                value: Some(value.clone()),
            }],
            low_water: None,
            epoch: None,
        };
        let text = sexpr::to_string(&push).unwrap();
        let back: PushRequest = sexpr::from_str(&text).unwrap();
        assert_eq!(back, push);
        let decoded: Nest = back.changes[0].value.as_ref().unwrap().to_value().unwrap();
        assert!(decoded == chain);
        assert_eq!(Raw::from_text(value.as_str()).unwrap(), value);
        // The message's own limit is unchanged.
        assert_eq!(
            sexpr::to_string(&chain).unwrap_err().category(),
            Category::Depth
        );
        // Past the value's limit: errors, alone and inside a message.
        let too_deep = format!(
            "{}1{}",
            "(".repeat(sexpr::VALUE_MAX_DEPTH + 1),
            ")".repeat(sexpr::VALUE_MAX_DEPTH + 1)
        );
        assert_eq!(
            Raw::from_text(&too_deep).unwrap_err().category(),
            Category::Depth
        );
        let inside = text.replace(value.as_str(), &too_deep);
        assert!(sexpr::from_str::<PushRequest>(&inside).is_err());
        assert_eq!(
            Raw::from_value(&nest(350)).unwrap_err().category(),
            Category::Depth
        );
        let at_limit = format!(
            "{}1{}",
            "(".repeat(sexpr::VALUE_MAX_DEPTH),
            ")".repeat(sexpr::VALUE_MAX_DEPTH)
        );
        assert!(Raw::from_text(&at_limit).is_ok());
    });
}

#[test]
fn nesting_past_the_limit_is_an_error_not_a_crash() {
    on_small_stack(|| {
        for open in ["(", "#(", "((a . "] {
            let text = open.repeat(100_000);
            let e = sexpr::from_str::<serde_json::Value>(&text).unwrap_err();
            assert_eq!(e.category(), Category::Depth, "{open}: {e}");
            let e = sexpr::from_str::<Nest>(&text).unwrap_err();
            assert!(
                matches!(e.category(), Category::Depth | Category::Data),
                "{e}"
            );
            let e = sexpr::from_str::<serde::de::IgnoredAny>(&text).unwrap_err();
            assert_eq!(e.category(), Category::Depth, "{e}");
            let e = Raw::from_text(&text).unwrap_err();
            assert_eq!(e.category(), Category::Depth, "{e}");
        }
        let e = sexpr::to_string(&nest(300)).unwrap_err();
        assert_eq!(e.category(), Category::Depth);
    });
}

#[test]
fn a_million_elements_on_a_2mib_stack() {
    on_small_stack(|| {
        let v: Vec<u32> = (0..1_000_000).collect();
        let text = sexpr::to_string(&v).unwrap();
        let back: Vec<u32> = sexpr::from_str(&text).unwrap();
        assert_eq!(back, v);
        let list = format!("({})", "() ".repeat(1_000_000));
        let back: Vec<()> = sexpr::from_str(&list).unwrap();
        assert_eq!(back.len(), 1_000_000);
        let raw = Raw::from_text(&list).unwrap();
        assert_eq!(raw.as_str().len(), list.len() - 1);
    });
}

#[test]
fn raw_values_are_inline_and_canonically_spaced() {
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Envelope {
        key: String,
        value: Raw,
    }
    let env: Envelope =
        sexpr::from_str("((key . \"k\") (value . ( (a . 1)\n ; note\n  (b . #( 1 2 ) ) )))")
            .unwrap();
    assert_eq!(env.value.as_str(), "((a . 1) (b . #(1 2)))");
    assert_eq!(
        sexpr::to_string(&env).unwrap(),
        "((key . \"k\") (value . ((a . 1) (b . #(1 2)))))"
    );
    // In another format a Raw is a string, still validated.
    let json = serde_json::to_string(&env).unwrap();
    assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), env);
    assert!(serde_json::from_str::<Envelope>(r#"{"key":"k","value":"(1 2"}"#).is_err());
    assert!(Raw::from_text("1 2").is_err());
    assert!(Raw::from_text(")").is_err());
    assert!(Raw::from_text("(1 . )").is_err());
    assert!(Raw::from_text("#zz").is_err());
    let hm: HashMap<String, u8> = Raw::from_text("((\"x\" . 1))").unwrap().to_value().unwrap();
    assert_eq!(hm["x"], 1);
}

#[test]
fn hostile_corpus_is_refused_cleanly() {
    on_small_stack(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let errors = [
                sexpr::from_slice::<serde_json::Value>(&input).err(),
                sexpr::from_slice::<serde::de::IgnoredAny>(&input).err(),
                sexpr::from_slice::<Nest>(&input).err(),
                sexpr::from_slice::<BTreeMap<String, Vec<u8>>>(&input).err(),
                std::str::from_utf8(&input)
                    .map_err(|_| ())
                    .and_then(|s| Raw::from_text(s).map_err(|_| ()))
                    .err()
                    .map(|()| sexpr::from_str::<u8>("x").unwrap_err()),
            ];
            for (i, e) in errors.into_iter().enumerate() {
                let e = e.unwrap_or_else(|| panic!("{name}: decoder {i} accepted hostile input"));
                assert!(!e.to_string().is_empty());
                if e.category() != Category::Data {
                    assert!(e.line().is_some(), "{name}: {e} has no position");
                }
            }
            count += 1;
        }
        assert!(count >= 30, "corpus has {count} files");
    });
}
