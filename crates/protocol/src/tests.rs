//! Round trips, size limits, garbage and version checks.

use halo_ids::Epoch;
use proptest::prelude::*;

use super::*;

fn halo(n: u128) -> halo_ids::HaloGuid {
    halo_ids::HaloGuid::from_u128(n).unwrap()
}

fn hello(version: u32) -> LinkToCloud {
    LinkToCloud::Hello(Hello {
        link_guid: halo_ids::LinkGuid::from_u128(1).unwrap(),
        environment: halo_ids::Environment::Stage,
        link_version: "0.1.0".into(),
        protocol_version: version,
        databases: vec![DatabaseInfo {
            halo_guid: halo(2),
            pms_type: halo_ids::PmsType::D4w,
            parent_crn: "AB123".parse().unwrap(),
            branch_crns: vec![BranchCrn {
                crn: "AB124".parse().unwrap(),
                location: "Fitzroy".into(),
            }],
            practice_name: "Smile Co".into(),
            pms_version: "15.2".into(),
            catalogues: vec![CatalogueInfo {
                name: "d4w".into(),
                is_default: true,
            }],
            is_demo: false,
        }],
    })
}

fn job() -> CloudToLink {
    CloudToLink::QueryJob(QueryJob {
        query_id: u64::MAX,
        halo_guid: halo(3),
        epoch: Epoch::new(4),
        timeout_ms: 30_000,
        queue_timeout_ms: Some(5_000),
        catalogue: None,
        mode: ExecutionMode::NonQuery,
        command: "update patients set x = ?1".into(),
        procedure: None,
        parameters: vec![
            serde_json::json!(1),
            serde_json::json!({"name": "@a", "value": "b"}),
        ],
        allowlist: Allowlist {
            tables: vec!["patients".into()],
            procedures: vec![],
            allow_write: true,
        },
    })
}

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(msg: M) {
    let frame = encode(&msg).unwrap();
    assert_eq!(decode::<M>(&frame).unwrap(), msg, "frame: {frame}");
}

#[test]
fn every_message_round_trips() {
    round_trip(hello(PROTOCOL_VERSION));
    round_trip(LinkToCloud::Heartbeat(Heartbeat {
        at: halo_ids::Timestamp::from_millis(5),
        databases: vec![halo(2), halo(3)],
    }));
    round_trip(LinkToCloud::QueryResult(QueryResult::from_json(
        9,
        1,
        br#"[{"a":1}]"#,
        3,
    )));
    round_trip(LinkToCloud::QueryFailed(QueryFailed {
        query_id: 9,
        error: QueryError {
            kind: QueryErrorKind::Database,
            code: Some(1),
            message: "no such table: x".into(),
        },
    }));
    round_trip(CloudToLink::HelloAck {
        rejected: vec![DatabaseRejection {
            halo_guid: halo(2),
            reason: "demo".into(),
        }],
        heartbeat_interval_ms: Some(5000),
    });
    round_trip(CloudToLink::Refused {
        reason: "bad token".into(),
    });
    round_trip(job());
    round_trip(CloudToLink::Cancel { query_id: 1 });
}

#[test]
fn wire_names_are_camel_case() {
    let frame = encode(&job()).unwrap();
    for needle in [
        r#""type":"queryJob""#,
        r#""queryId":18446744073709551615"#,
        r#""haloGuid":"00000000-0000-0000-0000-000000000003""#,
        r#""timeoutMs":30000"#,
        r#""queueTimeoutMs":5000"#,
        r#""mode":"nonQuery""#,
        r#""allowWrite":true"#,
    ] {
        assert!(frame.contains(needle), "{needle} missing from {frame}");
    }
    let frame = encode(&hello(PROTOCOL_VERSION)).unwrap();
    for needle in [
        r#""type":"hello""#,
        r#""protocolVersion":1"#,
        r#""parentCrn":"AB123""#,
        r#""branchCrns":[{"crn":"AB124","location":"Fitzroy"}]"#,
        r#""isDemo":false"#,
        r#""pmsType":"D4w""#,
        r#""environment":"stage""#,
    ] {
        assert!(frame.contains(needle), "{needle} missing from {frame}");
    }
}

/// Frames as protocol version 1 writes them, byte for byte. Links and Clouds of
/// other builds speak this: a Rust rename must never change it.
const FROZEN_FRAMES: [&str; 4] = [
    r#"{"type":"hello","linkGuid":"00000000-0000-0000-0000-000000000001","environment":"stage","linkVersion":"0.1.0","protocolVersion":1,"databases":[{"haloGuid":"00000000-0000-0000-0000-000000000002","pmsType":"D4w","parentCrn":"AB123","branchCrns":[{"crn":"AB124","location":"Fitzroy"}],"practiceName":"Smile Co","pmsVersion":"15.2","catalogues":[{"name":"d4w","isDefault":true}],"isDemo":false}]}"#,
    r#"{"type":"heartbeat","at":5,"sites":["00000000-0000-0000-0000-000000000002","00000000-0000-0000-0000-000000000003"]}"#,
    r#"{"type":"queryFailed","queryId":9,"error":{"kind":"unknownSite","code":null,"message":"no such database"}}"#,
    r#"{"type":"queryJob","queryId":7,"haloGuid":"00000000-0000-0000-0000-000000000003","epoch":4,"timeoutMs":30000,"catalogue":null,"mode":"reader","command":"select 1","parameters":[],"allowlist":{"tables":[],"procedures":[],"allowWrite":false}}"#,
];

#[test]
fn version_one_frames_are_frozen() {
    for (i, frame) in FROZEN_FRAMES.into_iter().enumerate() {
        let again = if i == 3 {
            encode(&decode::<CloudToLink>(frame).unwrap()).unwrap()
        } else {
            encode(&decode::<LinkToCloud>(frame).unwrap()).unwrap()
        };
        assert_eq!(again, frame);
    }
}

#[test]
fn result_data_is_base64_of_the_json() {
    let r = QueryResult::from_json(1, 2, br#"[{"a":1},{"a":2}]"#, 0);
    assert_eq!(r.size, 17);
    assert_eq!(r.json().unwrap(), br#"[{"a":1},{"a":2}]"#);
    let bad = QueryResult {
        data: "***".into(),
        ..r
    };
    assert_eq!(bad.json(), Err(ProtocolError::BadData));
}

#[test]
fn oversize_frame_is_rejected_before_parsing() {
    // Not even JSON: proves the size check comes first.
    let frame = "x".repeat(MAX_FRAME_BYTES + 1);
    assert_eq!(
        decode::<CloudToLink>(&frame),
        Err(ProtocolError::FrameTooLarge {
            len: MAX_FRAME_BYTES + 1,
            max: MAX_FRAME_BYTES
        })
    );
}

#[test]
fn full_size_result_fits_in_a_frame() {
    let json = vec![b'7'; MAX_RESULT_BYTES];
    let msg = LinkToCloud::QueryResult(QueryResult::from_json(1, 1, &json, 1));
    let frame = encode(&msg).unwrap();
    assert!(frame.len() <= MAX_FRAME_BYTES);
    assert_eq!(decode::<LinkToCloud>(&frame).unwrap(), msg);
}

#[test]
fn encode_refuses_oversize_frames() {
    let json = vec![b'7'; MAX_FRAME_BYTES];
    let msg = LinkToCloud::QueryResult(QueryResult::from_json(1, 1, &json, 1));
    assert!(matches!(
        encode(&msg),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
}

#[test]
fn garbage_frames_are_malformed() {
    for frame in [
        "",
        "null",
        "{",
        "[]",
        r#"{"type":"nope"}"#,
        r#"{"queryId":1}"#,
        r#"{"type":"cancel"}"#,
        r#"{"type":"cancel","queryId":-1}"#,
        r#"{"type":"cancel","queryId":"1"}"#,
        "\u{0}\u{1}\u{2}",
    ] {
        assert!(
            matches!(
                decode::<CloudToLink>(frame),
                Err(ProtocolError::Malformed { .. })
            ),
            "{frame:?}"
        );
    }
}

#[test]
fn invalid_identifiers_are_malformed() {
    let frame = encode(&job())
        .unwrap()
        .replace("00000000-0000-0000-0000-000000000003", "not-a-guid");
    assert!(matches!(
        decode::<CloudToLink>(&frame),
        Err(ProtocolError::Malformed { .. })
    ));
    let frame = encode(&hello(1)).unwrap().replace("AB123", "AB 123");
    assert!(matches!(
        decode::<LinkToCloud>(&frame),
        Err(ProtocolError::Malformed { .. })
    ));
}

#[test]
fn a_message_of_the_other_direction_is_malformed() {
    let frame = encode(&CloudToLink::Cancel { query_id: 1 }).unwrap();
    assert!(matches!(
        decode::<LinkToCloud>(&frame),
        Err(ProtocolError::Malformed { .. })
    ));
}

#[test]
fn unknown_protocol_version_is_rejected() {
    let frame = encode(&hello(PROTOCOL_VERSION + 1)).unwrap();
    assert_eq!(
        decode::<LinkToCloud>(&frame),
        Err(ProtocolError::UnsupportedVersion {
            got: PROTOCOL_VERSION + 1,
            supported: PROTOCOL_VERSION
        })
    );
    let frame = encode(&hello(0)).unwrap();
    assert!(matches!(
        decode::<LinkToCloud>(&frame),
        Err(ProtocolError::UnsupportedVersion { got: 0, .. })
    ));
}

#[test]
fn unknown_fields_are_ignored() {
    let msg = decode::<CloudToLink>(r#"{"type":"cancel","queryId":3,"extra":true}"#).unwrap();
    assert_eq!(msg, CloudToLink::Cancel { query_id: 3 });
}

#[test]
fn optional_fields_default() {
    let msg = decode::<CloudToLink>(r#"{"type":"helloAck"}"#).unwrap();
    assert_eq!(
        msg,
        CloudToLink::HelloAck {
            rejected: vec![],
            heartbeat_interval_ms: None
        }
    );
}

#[test]
fn a_job_from_an_older_cloud_has_no_queue_budget() {
    let mut frame = encode(&job()).unwrap();
    frame = frame.replace(r#""queueTimeoutMs":5000,"#, "");
    assert!(!frame.contains("queueTimeoutMs"), "{frame}");
    match decode::<CloudToLink>(&frame).unwrap() {
        CloudToLink::QueryJob(j) => assert_eq!((j.timeout_ms, j.queue_timeout_ms), (30_000, None)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_reason_is_short() {
    let frame = format!(r#"{{"type":"{}"}}"#, "z".repeat(10_000));
    match decode::<CloudToLink>(&frame) {
        Err(ProtocolError::Malformed { reason, .. }) => assert!(reason.chars().count() <= 120),
        other => panic!("unexpected {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn decode_never_panics(frame in ".{0,200}") {
        let _ = decode::<CloudToLink>(&frame);
        let _ = decode::<LinkToCloud>(&frame);
    }

    #[test]
    fn jobs_round_trip(
        query_id in any::<u64>(),
        epoch in any::<u64>(),
        timeout_ms in any::<u64>(),
        queue_timeout_ms in any::<Option<u64>>(),
        command in ".{0,64}",
        tables in proptest::collection::vec("[a-z_]{1,12}", 0..4),
        allow_write in any::<bool>(),
        n in 1u128..,
    ) {
        let msg = CloudToLink::QueryJob(QueryJob {
            query_id,
            halo_guid: halo(n),
            epoch: Epoch::new(epoch),
            timeout_ms,
            queue_timeout_ms,
            catalogue: Some("d4w".into()),
            mode: ExecutionMode::Reader,
            command,
            procedure: None,
            parameters: vec![],
            allowlist: Allowlist { tables, procedures: vec![], allow_write },
        });
        let frame = encode(&msg).unwrap();
        prop_assert_eq!(decode::<CloudToLink>(&frame).unwrap(), msg);
    }
}
