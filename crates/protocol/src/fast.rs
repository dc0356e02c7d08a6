//! A fast path for the frequent frames: heartbeats, jobs and their answers.
//!
//! [`decode`](crate::decode) of a [`LinkToCloud`] or a [`CloudToLink`] goes through
//! serde's internally tagged enum, which first buffers the whole object into an
//! intermediate tree and only then builds the variant. [`encode`](crate::encode)
//! writes the tag first, so [`decode_link_frame`] and [`decode_cloud_frame`] read the
//! tag of such a frame, then the rest of the object straight into the variant's
//! struct. Anything else, and anything the struct refuses, goes through `decode`
//! itself: the fast path accepts only frames that `decode` accepts as the same
//! message, so the wire protocol is unchanged.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer as _, Error as _, MapAccess, Visitor};

use crate::{
    CloudToLink, Heartbeat, LinkToCloud, MAX_FRAME_BYTES, ProtocolError, QueryFailed, QueryJob,
    QueryResult, ResultEnd, ResultPage, decode,
};

/// How [`encode`](crate::encode) starts every frame: the tag's key.
const TAG_FIRST: &str = r#"{"type":"#;

/// Parses one text frame from a Link, as [`decode::<LinkToCloud>`](decode) does,
/// with heartbeats, results and failures read without the tagged enum's buffering.
///
/// # Errors
///
/// Those of [`decode`].
pub fn decode_link_frame(frame: &str) -> Result<LinkToCloud, ProtocolError> {
    match tag_first(frame) {
        Some(msg) => Ok(msg),
        None => decode(frame),
    }
}

/// Parses one text frame from the Cloud, as [`decode::<CloudToLink>`](decode) does,
/// with a job read without the tagged enum's buffering.
///
/// # Errors
///
/// Those of [`decode`].
pub fn decode_cloud_frame(frame: &str) -> Result<CloudToLink, ProtocolError> {
    match tag_first(frame) {
        Some(msg) => Ok(msg),
        None => decode(frame),
    }
}

/// A message with variants this path reads.
trait Frequent: Sized {
    /// The variant of `tag`, read from the rest of the object; an error for a variant
    /// left to `decode` (the hello, whose version `decode` checks, among them).
    fn variant<'de, A: MapAccess<'de>>(tag: &str, rest: A) -> Result<Self, A::Error>;
}

impl Frequent for LinkToCloud {
    fn variant<'de, A: MapAccess<'de>>(tag: &str, rest: A) -> Result<Self, A::Error> {
        let rest = MapAccessDeserializer::new(rest);
        Ok(match tag {
            "heartbeat" => Self::Heartbeat(Heartbeat::deserialize(rest)?),
            "queryResult" => Self::QueryResult(QueryResult::deserialize(rest)?),
            "queryFailed" => Self::QueryFailed(QueryFailed::deserialize(rest)?),
            "resultPage" => Self::ResultPage(ResultPage::deserialize(rest)?),
            "resultEnd" => Self::ResultEnd(ResultEnd::deserialize(rest)?),
            _ => return Err(A::Error::custom("not on the fast path")),
        })
    }
}

impl Frequent for CloudToLink {
    fn variant<'de, A: MapAccess<'de>>(tag: &str, rest: A) -> Result<Self, A::Error> {
        match tag {
            "queryJob" => Ok(Self::QueryJob(QueryJob::deserialize(
                MapAccessDeserializer::new(rest),
            )?)),
            _ => Err(A::Error::custom("not on the fast path")),
        }
    }
}

/// The message, when `frame` is written tag first and its variant is one of `M`'s
/// frequent ones.
///
/// `decode` refuses an object with a second `type` key; the variant's struct would
/// ignore it as an unknown field. So a frame whose rest holds the text `"type"`, or a
/// `\u` escape (which could spell it), is left to `decode`.
fn tag_first<M: Frequent>(frame: &str) -> Option<M> {
    let rest = frame.strip_prefix(TAG_FIRST)?;
    if frame.len() > MAX_FRAME_BYTES || rest.contains(r#""type""#) || rest.contains(r"\u") {
        return None;
    }
    let mut de = serde_json::Deserializer::from_str(frame);
    let msg = de.deserialize_map(TagFirst(PhantomData)).ok()?;
    de.end().ok()?;
    Some(msg)
}

/// Reads the tag, which must be the first key (borrowed, so an escaped one is
/// refused), then the variant.
struct TagFirst<M>(PhantomData<M>);

impl<'de, M: Frequent> Visitor<'de> for TagFirst<M> {
    type Value = M;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message written tag first")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<M, A::Error> {
        match map.next_key::<&'de str>()? {
            Some("type") => {
                let tag: &'de str = map.next_value()?;
                M::variant(tag, map)
            }
            _ => Err(A::Error::custom("the tag is not first")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use halo_ids::{Epoch, ExecutionMode, HaloGuid, Timestamp};
    use proptest::prelude::*;

    use super::*;
    use crate::{Allowlist, QueryError, QueryErrorKind, encode};

    fn beat(at: u64, sites: &[u128]) -> LinkToCloud {
        LinkToCloud::Heartbeat(Heartbeat {
            at: Timestamp::from_millis(at),
            databases: sites
                .iter()
                .map(|&n| HaloGuid::from_u128(n).unwrap())
                .collect(),
        })
    }

    fn job(query_id: u64, command: &str, parameters: Vec<serde_json::Value>) -> CloudToLink {
        CloudToLink::QueryJob(QueryJob {
            query_id,
            halo_guid: HaloGuid::from_u128(7).unwrap(),
            epoch: Epoch::new(3),
            timeout_ms: 30_000,
            queue_timeout_ms: Some(100),
            catalogue: None,
            mode: ExecutionMode::Reader,
            command: command.to_owned(),
            procedure: None,
            parameters,
            allowlist: Allowlist {
                tables: vec!["patients".into()],
                procedures: vec![],
                allow_write: false,
            },
        })
    }

    fn fast_link(frame: &str) -> Option<LinkToCloud> {
        tag_first(frame)
    }

    fn fast_cloud(frame: &str) -> Option<CloudToLink> {
        tag_first(frame)
    }

    #[test]
    fn encoded_frequent_frames_take_the_fast_path() {
        let answers = [
            beat(1_700_000_000_000, &[2, 3]),
            LinkToCloud::QueryResult(QueryResult::from_json(9, 1, br#"[{"a":1}]"#, 2)),
            LinkToCloud::QueryFailed(QueryFailed {
                query_id: 9,
                error: QueryError::new(QueryErrorKind::Timeout, "too slow"),
            }),
        ];
        for msg in answers {
            let frame = encode(&msg).unwrap();
            assert_eq!(fast_link(&frame), Some(msg.clone()), "{frame}");
            assert_eq!(decode_link_frame(&frame).unwrap(), msg);
        }
        let msg = job(5, "SELECT 1", vec![serde_json::json!(1)]);
        let frame = encode(&msg).unwrap();
        assert_eq!(fast_cloud(&frame), Some(msg.clone()), "{frame}");
        assert_eq!(decode_cloud_frame(&frame).unwrap(), msg);
    }

    #[test]
    fn frames_the_general_decoder_refuses_are_refused() {
        let ok = encode(&beat(5, &[2])).unwrap();
        let site = ok.split("\"sites\":").nth(1).unwrap().to_owned();
        for frame in [
            // A second tag.
            format!(r#"{{"type":"heartbeat","type":"hello","at":5,"sites":{site}"#),
            format!(r#"{{"type":"heartbeat","at":5,"type":"heartbeat","sites":{site}"#),
            // A second tag, escaped.
            format!(r#"{{"type":"heartbeat","at":5,"\u0074ype":"heartbeat","sites":{site}"#),
            // Trailing bytes.
            format!("{ok}x"),
            // A site that is no GUID.
            r#"{"type":"heartbeat","at":5,"sites":["nope"]}"#.to_owned(),
            // No sites.
            r#"{"type":"heartbeat","at":5}"#.to_owned(),
            // A negative clock.
            r#"{"type":"heartbeat","at":-5,"sites":[]}"#.to_owned(),
            // No such message.
            r#"{"type":"queryJob","at":5}"#.to_owned(),
        ] {
            assert!(decode::<LinkToCloud>(&frame).is_err(), "{frame}");
            assert!(decode_link_frame(&frame).is_err(), "{frame}");
        }
        let ok = encode(&job(5, "SELECT 1", vec![])).unwrap();
        let rest = ok.strip_prefix(r#"{"type":"queryJob","#).unwrap();
        for frame in [
            format!(r#"{{"type":"queryJob","type":"cancel",{rest}"#),
            format!(r#"{{"type":"queryJob","\u0074ype":"cancel",{rest}"#),
            format!(r#"{{"type":"queryJob",{rest} "#).replace("SELECT", "\u{0}"),
            r#"{"type":"queryJob","queryId":1}"#.to_owned(),
        ] {
            assert!(decode::<CloudToLink>(&frame).is_err(), "{frame}");
            assert!(decode_cloud_frame(&frame).is_err(), "{frame}");
        }
    }

    #[test]
    fn other_messages_and_other_layouts_still_decode() {
        // Fields in another order, with spaces: not the fast path, still a heartbeat.
        let frame = r#"{ "sites": [], "at": 9, "type": "heartbeat" }"#;
        assert!(fast_link(frame).is_none());
        assert_eq!(decode_link_frame(frame).unwrap(), beat(9, &[]));
        // A job whose parameters hold a `type` key: the general decoder reads it.
        let msg = job(6, "SELECT 1", vec![serde_json::json!({"type": 1})]);
        let frame = encode(&msg).unwrap();
        assert!(fast_cloud(&frame).is_none());
        assert_eq!(decode_cloud_frame(&frame).unwrap(), msg);
        // Messages the fast path does not read.
        let cancel = encode(&CloudToLink::Cancel { query_id: 4 }).unwrap();
        assert!(fast_cloud(&cancel).is_none());
        assert_eq!(
            decode_cloud_frame(&cancel).unwrap(),
            CloudToLink::Cancel { query_id: 4 }
        );
        let hello = r#"{"type":"hello","protocolVersion":2}"#;
        assert!(fast_link(hello).is_none());
        assert_eq!(
            decode_link_frame(hello).err(),
            decode::<LinkToCloud>(hello).err()
        );
    }

    /// The frame with `junk` inserted at `cut` (or unchanged, off a char boundary).
    fn mutate(frame: &str, cut: usize, junk: &str) -> String {
        let cut = cut.min(frame.len());
        if frame.is_char_boundary(cut) {
            format!("{}{junk}{}", &frame[..cut], &frame[cut..])
        } else {
            frame.to_owned()
        }
    }

    proptest! {
        /// Whatever the frame, the fast path agrees with the general decoder: the
        /// same message, or both refuse it.
        #[test]
        fn agrees_with_decode_on_link_frames(
            at in any::<u64>(),
            sites in proptest::collection::vec(1u128..u128::MAX, 0..4),
            rows in any::<u64>(),
            data in proptest::collection::vec(any::<u8>(), 0..40),
            cut in 0usize..200,
            junk in r#"[ -~]{0,12}|"type":1,|"\\u0074ype":1,"#,
            extra in proptest::option::of("[a-z]{1,6}"),
        ) {
            for msg in [
                beat(at, &sites),
                LinkToCloud::QueryResult(QueryResult::from_json(at, rows, &data, 1)),
            ] {
                let mut frame = encode(&msg).unwrap();
                if let Some(field) = &extra {
                    let after_tag = frame.find(',').unwrap() + 1;
                    frame.insert_str(after_tag, &format!(r#""{field}":1,"#));
                }
                let mutated = mutate(&frame, cut, &junk);
                for f in [&frame, &mutated] {
                    prop_assert_eq!(decode_link_frame(f).ok(), decode::<LinkToCloud>(f).ok());
                }
            }
        }

        /// The same for jobs, with any command text and parameters.
        #[test]
        fn agrees_with_decode_on_jobs(
            query_id in any::<u64>(),
            command in ".{0,40}",
            numbers in proptest::collection::vec(any::<i64>(), 0..3),
            texts in proptest::collection::vec(".{0,10}", 0..3),
            cut in 0usize..300,
            junk in r#"[ -~]{0,12}|"type":1,|"\\u0074ype":1,|"queryId":1,"#,
        ) {
            let parameters = numbers
                .into_iter()
                .map(serde_json::Value::from)
                .chain(texts.into_iter().map(serde_json::Value::from))
                .collect();
            let frame = encode(&job(query_id, &command, parameters)).unwrap();
            let mutated = mutate(&frame, cut, &junk);
            for f in [&frame, &mutated] {
                prop_assert_eq!(decode_cloud_frame(f).ok(), decode::<CloudToLink>(f).ok());
            }
        }
    }
}
