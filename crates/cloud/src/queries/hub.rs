//! Where the pages of a paged result meet their runner. The Link session
//! (`link_ws.rs`) delivers pages and ends here; the runner of the async query
//! (`async_query.rs`) takes them, stores each page, and acknowledges it, which
//! lets the Link send the next one. The session never waits: a Link that sends more
//! pages than its window allows fails its query instead of filling memory.

use std::collections::HashMap;
use std::sync::Mutex;

use halo_protocol::{CloudToLink, ResultEnd, ResultPage};
use tokio::sync::mpsc;

/// What the Link sent for one paged query.
#[derive(Debug)]
pub enum StreamEvent {
    /// A page.
    Page(ResultPage),
    /// The end (after every page).
    End(ResultEnd),
}

/// Why a page was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// More pages in flight than the window granted.
    #[error("the link sent more pages than its window allows")]
    OverWindow,
}

#[derive(Debug)]
struct Entry {
    tx: mpsc::UnboundedSender<StreamEvent>,
    rx: Option<mpsc::UnboundedReceiver<StreamEvent>>,
    /// The Link session's outgoing messages, once the job was sent.
    control: Option<mpsc::UnboundedSender<CloudToLink>>,
    /// Pages delivered and not yet acknowledged.
    outstanding: u32,
    window: u32,
}

impl Entry {
    fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Some(rx),
            control: None,
            outstanding: 0,
            window: u32::MAX,
        }
    }
}

/// The meeting point of paged results, keyed by the router's query id.
#[derive(Debug, Default)]
pub struct StreamHub {
    entries: Mutex<HashMap<u64, Entry>>,
}

impl StreamHub {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<u64, Entry>) -> T) -> T {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut entries)
    }

    /// The runner's end of a query's pages (once; `None` the second time).
    pub fn take_receiver(&self, query_id: u64) -> Option<mpsc::UnboundedReceiver<StreamEvent>> {
        self.with(|e| e.entry(query_id).or_insert_with(Entry::new).rx.take())
    }

    /// The session sent the job: acknowledgements and cancels go to `control`.
    pub fn bind(&self, query_id: u64, control: mpsc::UnboundedSender<CloudToLink>, window: u32) {
        self.with(|e| {
            let entry = e.entry(query_id).or_insert_with(Entry::new);
            entry.control = Some(control);
            entry.window = window;
        });
    }

    /// A page from the Link. Dropped if nobody waits for the query any more.
    ///
    /// # Errors
    /// [`HubError::OverWindow`] when the Link ignores its window.
    pub fn page(&self, page: ResultPage) -> Result<(), HubError> {
        self.with(|e| {
            let Some(entry) = e.get_mut(&page.query_id) else {
                return Ok(());
            };
            if entry.outstanding >= entry.window {
                return Err(HubError::OverWindow);
            }
            entry.outstanding += 1;
            let _ = entry.tx.send(StreamEvent::Page(page));
            Ok(())
        })
    }

    /// The end of a query's pages.
    pub fn end(&self, end: ResultEnd) {
        self.with(|e| {
            if let Some(entry) = e.get(&end.query_id) {
                let _ = entry.tx.send(StreamEvent::End(end));
            }
        });
    }

    /// The runner stored `pages` pages: the Link may send as many more.
    pub fn ack(&self, query_id: u64, pages: u32) {
        self.with(|e| {
            if let Some(entry) = e.get_mut(&query_id) {
                entry.outstanding = entry.outstanding.saturating_sub(pages);
                if let Some(control) = &entry.control {
                    let _ = control.send(CloudToLink::StreamAck { query_id, pages });
                }
            }
        });
    }

    /// Stops the query at the Link (if the job was sent) and forgets it.
    pub fn cancel(&self, query_id: u64) {
        self.with(|e| {
            if let Some(entry) = e.remove(&query_id) {
                if let Some(control) = entry.control {
                    let _ = control.send(CloudToLink::Cancel { query_id });
                }
            }
        });
    }

    /// Forgets a finished query.
    pub fn remove(&self, query_id: u64) {
        self.with(|e| e.remove(&query_id));
    }

    /// Queries being paged now.
    pub fn len(&self) -> usize {
        self.with(|e| e.len())
    }

    /// Whether no query is being paged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn page(query_id: u64, n: u32) -> ResultPage {
        ResultPage::from_json(query_id, n, 0, 0, b"[]")
    }

    #[test]
    fn a_link_over_its_window_is_refused_and_acks_reach_the_link() {
        let hub = StreamHub::default();
        let mut rx = hub.take_receiver(7).unwrap();
        assert!(hub.take_receiver(7).is_none());
        let (control, mut sent) = mpsc::unbounded_channel();
        hub.bind(7, control, 2);
        hub.page(page(7, 1)).unwrap();
        hub.page(page(7, 2)).unwrap();
        assert_eq!(hub.page(page(7, 3)), Err(HubError::OverWindow));
        assert!(matches!(rx.try_recv().unwrap(), StreamEvent::Page(p) if p.page_number == 1));
        hub.ack(7, 1);
        assert_eq!(
            sent.try_recv().unwrap(),
            CloudToLink::StreamAck {
                query_id: 7,
                pages: 1
            }
        );
        hub.page(page(7, 3)).unwrap();
        hub.cancel(7);
        assert_eq!(
            sent.try_recv().unwrap(),
            CloudToLink::Cancel { query_id: 7 }
        );
        // Forgotten: a late page is dropped.
        hub.page(page(7, 4)).unwrap();
        assert!(hub.is_empty());
    }
}
