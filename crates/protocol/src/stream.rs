//! Paged results (the async path): the Cloud sends a [`StreamJob`], the Link answers
//! with [`ResultPage`]s and one [`ResultEnd`] (or a `QueryFailed`), and never has
//! more than `window` pages sent and not yet acknowledged with
//! [`crate::CloudToLink::StreamAck`]. Neither side holds more of a result than the
//! pages in that window.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::{ProtocolError, QueryJob};

/// Run a query and send its result back in pages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamJob {
    /// The job, as for the immediate path (its `timeoutMs` is the async deadline).
    #[serde(flatten)]
    pub job: QueryJob,
    /// The most bytes of JSON rows in one page; a single larger row is a page alone.
    /// At most [`crate::MAX_RESULT_BYTES`].
    pub page_bytes: u64,
    /// The most pages the Link sends before it waits for a [`crate::CloudToLink::StreamAck`].
    pub window: u32,
}

/// One page of a paged result: whole rows, a JSON array like an immediate result's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultPage {
    /// The job.
    pub query_id: u64,
    /// 1 for the first page, then one more per page.
    pub page_number: u32,
    /// The index (from 0) of the page's first row in the whole result.
    pub row_start: u64,
    /// Rows in this page.
    pub rows: u64,
    /// Byte length of the JSON behind `data`.
    pub size: u64,
    /// Base64 of the page's JSON array of rows.
    pub data: String,
}

impl ResultPage {
    /// Builds a page from the JSON text of its rows.
    pub fn from_json(
        query_id: u64,
        page_number: u32,
        row_start: u64,
        rows: u64,
        json: &[u8],
    ) -> Self {
        Self {
            query_id,
            page_number,
            row_start,
            rows,
            size: json.len() as u64,
            data: BASE64.encode(json),
        }
    }

    /// The JSON text of the page's rows.
    ///
    /// # Errors
    /// [`ProtocolError::BadData`] if `data` is not valid base64.
    pub fn json(&self) -> Result<Vec<u8>, ProtocolError> {
        crate::message::rows_json(&self.data)
    }
}

/// The end of a paged result: every page was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultEnd {
    /// The job.
    pub query_id: u64,
    /// Rows returned (reader, scalar) or changed (nonQuery).
    pub rows: u64,
    /// Pages sent.
    pub pages: u32,
    /// Bytes of JSON over all pages.
    pub size: u64,
    /// Time spent executing in the database, in milliseconds.
    pub duration_ms: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use halo_ids::{Epoch, ExecutionMode, HaloGuid};

    use super::*;
    use crate::{Allowlist, CloudToLink, LinkToCloud, decode, encode};

    fn stream_job() -> CloudToLink {
        CloudToLink::StreamJob(StreamJob {
            job: QueryJob {
                query_id: u64::MAX,
                halo_guid: HaloGuid::from_u128(3).unwrap(),
                epoch: Epoch::new(4),
                timeout_ms: 3_600_000,
                queue_timeout_ms: Some(7_200_000),
                catalogue: Some("d4w".into()),
                mode: ExecutionMode::Reader,
                command: "select 1".into(),
                procedure: None,
                parameters: vec![serde_json::json!({"name": "@a", "value": "b"})],
                allowlist: Allowlist {
                    tables: vec!["patients".into()],
                    procedures: vec![],
                    allow_write: false,
                },
            },
            page_bytes: 4 << 20,
            window: 2,
        })
    }

    #[test]
    fn stream_messages_round_trip_with_the_job_flattened() {
        let msg = stream_job();
        let frame = encode(&msg).unwrap();
        assert!(frame.starts_with(r#"{"type":"streamJob","queryId":18446744073709551615"#));
        assert_eq!(decode::<CloudToLink>(&frame).unwrap(), msg);
        let ack = CloudToLink::StreamAck {
            query_id: 9,
            pages: 1,
        };
        assert_eq!(
            encode(&ack).unwrap(),
            r#"{"type":"streamAck","queryId":9,"pages":1}"#
        );
        let page = LinkToCloud::ResultPage(ResultPage::from_json(9, 1, 0, 1, br#"[{"a":1}]"#));
        let frame = encode(&page).unwrap();
        assert_eq!(decode::<LinkToCloud>(&frame).unwrap(), page);
        let LinkToCloud::ResultPage(p) = page else {
            unreachable!()
        };
        assert_eq!(p.json().unwrap(), br#"[{"a":1}]"#);
        let end = LinkToCloud::ResultEnd(ResultEnd {
            query_id: 9,
            rows: 1,
            pages: 1,
            size: 9,
            duration_ms: 3,
        });
        assert_eq!(decode::<LinkToCloud>(&encode(&end).unwrap()).unwrap(), end);
    }

    #[test]
    fn a_largest_page_fits_in_a_frame() {
        let json = vec![b'x'; crate::MAX_RESULT_BYTES];
        let page = LinkToCloud::ResultPage(ResultPage::from_json(
            u64::MAX,
            u32::MAX,
            u64::MAX,
            u64::MAX,
            &json,
        ));
        assert!(encode(&page).is_ok());
    }
}
