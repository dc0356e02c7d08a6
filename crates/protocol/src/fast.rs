//! A fast path for the most frequent frame: a Link's heartbeat.
//!
//! [`decode`](crate::decode) of a [`LinkToCloud`] goes through serde's internally
//! tagged enum, which first buffers the whole object into an intermediate tree and
//! only then builds the variant. A Cloud receives one heartbeat per Link every few
//! seconds, so [`decode_link_frame`] recognises the heartbeat by its tag (the way
//! [`encode`](crate::encode) writes it: the tag first) and reads it straight into a
//! plain struct. Anything else, and anything the plain struct refuses, goes through
//! `decode` itself: the fast path accepts only frames that `decode` accepts as the
//! same heartbeat, so the wire protocol is unchanged.

use halo_ids::{HaloGuid, Timestamp};
use serde::Deserialize;

use crate::{Heartbeat, LinkToCloud, MAX_FRAME_BYTES, ProtocolError, decode};

/// How [`encode`](crate::encode) starts a heartbeat frame.
const HEARTBEAT_PREFIX: &str = r#"{"type":"heartbeat","#;

/// The tag's only accepted value here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum HeartbeatTag {
    Heartbeat,
}

/// A heartbeat frame read as a plain struct: the tag is a field. A repeated field
/// (a second `type`, say) is an error, and then `decode` decides.
#[derive(Deserialize)]
struct HeartbeatFrame {
    #[serde(rename = "type")]
    _tag: HeartbeatTag,
    at: Timestamp,
    sites: Vec<HaloGuid>,
}

/// Parses one text frame from a Link, as [`decode::<LinkToCloud>`](decode) does,
/// with a heartbeat read without the tagged enum's intermediate buffering.
///
/// # Errors
///
/// Those of [`decode`].
pub fn decode_link_frame(frame: &str) -> Result<LinkToCloud, ProtocolError> {
    match fast_heartbeat(frame) {
        Some(beat) => Ok(LinkToCloud::Heartbeat(beat)),
        None => decode(frame),
    }
}

/// The heartbeat, when `frame` is one written the way `encode` writes it.
fn fast_heartbeat(frame: &str) -> Option<Heartbeat> {
    if frame.len() > MAX_FRAME_BYTES || !frame.starts_with(HEARTBEAT_PREFIX) {
        return None;
    }
    let beat: HeartbeatFrame = serde_json::from_str(frame).ok()?;
    Some(Heartbeat {
        at: beat.at,
        databases: beat.sites,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;
    use crate::encode;

    fn beat(at: u64, sites: &[u128]) -> LinkToCloud {
        LinkToCloud::Heartbeat(Heartbeat {
            at: Timestamp::from_millis(at),
            databases: sites
                .iter()
                .map(|&n| HaloGuid::from_u128(n).unwrap())
                .collect(),
        })
    }

    #[test]
    fn an_encoded_heartbeat_takes_the_fast_path() {
        let frame = encode(&beat(1_700_000_000_000, &[2, 3])).unwrap();
        assert!(fast_heartbeat(&frame).is_some(), "{frame}");
        assert_eq!(
            decode_link_frame(&frame).unwrap(),
            beat(1_700_000_000_000, &[2, 3])
        );
    }

    #[test]
    fn frames_the_general_decoder_refuses_are_refused() {
        let ok = encode(&beat(5, &[2])).unwrap();
        let site = ok.split("\"sites\":").nth(1).unwrap().to_owned();
        for frame in [
            // A second tag.
            format!(r#"{{"type":"heartbeat","type":"hello","at":5,"sites":{site}"#),
            // Trailing bytes.
            format!("{ok}x"),
            // A site that is no GUID.
            r#"{"type":"heartbeat","at":5,"sites":["nope"]}"#.to_owned(),
            // No sites.
            r#"{"type":"heartbeat","at":5}"#.to_owned(),
            // A negative clock.
            r#"{"type":"heartbeat","at":-5,"sites":[]}"#.to_owned(),
        ] {
            assert!(decode::<LinkToCloud>(&frame).is_err(), "{frame}");
            assert!(decode_link_frame(&frame).is_err(), "{frame}");
        }
    }

    #[test]
    fn other_messages_and_other_layouts_still_decode() {
        // Fields in another order, with spaces: not the fast path, still a heartbeat.
        let frame = r#"{ "sites": [], "at": 9, "type": "heartbeat" }"#;
        assert!(fast_heartbeat(frame).is_none());
        assert_eq!(decode_link_frame(frame).unwrap(), beat(9, &[]));
        let cancel =
            r#"{"type":"queryFailed","queryId":1,"error":{"kind":"timeout","message":"m"}}"#;
        assert_eq!(
            decode_link_frame(cancel).ok(),
            decode::<LinkToCloud>(cancel).ok()
        );
    }

    proptest! {
        /// Whatever the frame, the fast path agrees with the general decoder: the
        /// same message, or both refuse it.
        #[test]
        fn agrees_with_decode(
            at in any::<u64>(),
            sites in proptest::collection::vec(1u128..u128::MAX, 0..4),
            cut in 0usize..200,
            junk in "[ -~]{0,12}",
            extra in proptest::option::of("[a-z]{1,6}"),
        ) {
            let mut frame = encode(&beat(at, &sites)).unwrap();
            if let Some(field) = extra {
                frame.insert_str(HEARTBEAT_PREFIX.len(), &format!(r#""{field}":1,"#));
            }
            let cut = cut.min(frame.len());
            let mutated = if frame.is_char_boundary(cut) {
                format!("{}{junk}{}", &frame[..cut], &frame[cut..])
            } else {
                frame.clone()
            };
            for f in [&frame, &mutated] {
                prop_assert_eq!(decode_link_frame(f).ok(), decode::<LinkToCloud>(f).ok());
            }
        }
    }
}
