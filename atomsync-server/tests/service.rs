//! [`SyncService`] without HTTP: what server functions call.

mod common;

use atomsync_core::protocol::{ChangeResult, PullRequest};
use atomsync_server::{Credentials, Error, SyncService, TokenFile};
use common::{change, push_request};

on_both_backends! {
    fn pull_request(group: &str) -> PullRequest {
        PullRequest {
            group: group.to_owned(),
            since: None,
            limit: None,
        }
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone() {
        let service = service();
        let result = service.call(|_store| -> u32 { panic!("a bug") }).await;
        assert!(matches!(result, Err(Error::Unavailable)));
        let response = service
            .push(
                &Credentials::none(),
                push_request("g", "c", vec![change(1, "k", 0, Some("1"))]),
            )
            .await
            .unwrap();
        assert!(matches!(
            response.results[0],
            ChangeResult::Accepted { version: 1, .. }
        ));
    }

    #[tokio::test]
    async fn a_closed_service_refuses_work_and_ends_subscriptions() {
        let service = service();
        let mut subscription = service.subscribe(&Credentials::none(), "g").await.unwrap();
        assert!(subscription.recv().await.is_some());
        service.close().await;
        assert!(subscription.recv().await.is_none());
        let err = service
            .pull(&Credentials::none(), pull_request("g"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable));
        // Closing twice is harmless.
        service.close().await;
    }

    #[tokio::test]
    async fn every_operation_is_authorized() {
        let users = TokenFile::from_toml("[users.a]\ntoken = \"t\"\ngroups = [\"mine\"]").unwrap();
        let service = SyncService::with_authorizer(store(), users);
        let nobody = Credentials::none();
        let user = Credentials::bearer("t");
        let push = |group: &str| push_request(group, "c", vec![change(1, "k", 0, None)]);

        assert!(matches!(
            service.pull(&nobody, pull_request("mine")).await,
            Err(Error::Unauthorized)
        ));
        assert!(matches!(
            service.push(&nobody, push("mine")).await,
            Err(Error::Unauthorized)
        ));
        assert!(matches!(
            service.subscribe(&nobody, "mine").await,
            Err(Error::Unauthorized)
        ));
        assert!(matches!(
            service.pull(&user, pull_request("theirs")).await,
            Err(Error::Forbidden(g)) if g == "theirs"
        ));
        assert!(matches!(
            service.push(&user, push("theirs")).await,
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            service.subscribe(&user, "theirs").await,
            Err(Error::Forbidden(_))
        ));
        assert_eq!(service.cursor().seq, 0);
        service.push(&user, push("mine")).await.unwrap();
        assert_eq!(
            service
                .pull(&user, pull_request("mine"))
                .await
                .unwrap()
                .documents
                .len(),
            1
        );
        assert_eq!(service.cursor().seq, 1);
    }

    #[tokio::test]
    async fn the_service_reports_the_store_epoch_and_cursor() {
        let store = store();
        let epoch = store.epoch().to_owned();
        let service = SyncService::new(store);
        assert_eq!(service.epoch(), epoch);
        assert_eq!(service.cursor().epoch, epoch);
        let debug = format!("{service:?}");
        assert!(debug.contains(&epoch));
    }

    #[tokio::test]
    async fn an_up_to_date_pull_is_empty_and_changes_made_through_call_are_seen() {
        let service = service();
        let anyone = Credentials::none();
        service
            .push(
                &anyone,
                push_request("g", "c", vec![change(1, "a", 0, None)]),
            )
            .await
            .unwrap();
        let latest = service.cursor();
        let pull = |since| PullRequest {
            group: "g".to_owned(),
            since: Some(since),
            limit: None,
        };
        let page = service.pull(&anyone, pull(latest.clone())).await.unwrap();
        assert!(page.documents.is_empty() && !page.more);
        assert_eq!(page.cursor, latest);
        // A change made behind the service's back still moves its cursor.
        service
            .call(|store| store.push(&push_request("g", "c", vec![change(2, "b", 0, None)])))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(service.cursor().seq, 2);
        let page = service.pull(&anyone, pull(latest)).await.unwrap();
        assert_eq!(page.documents.len(), 1);
        assert_eq!(page.documents[0].key, "b");
        let zero = PullRequest {
            limit: Some(0),
            ..pull(service.cursor())
        };
        assert!(matches!(
            service.pull(&anyone, zero).await,
            Err(Error::BadRequest(_))
        ));
    }
}
