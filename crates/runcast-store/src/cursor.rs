//! Keyset pagination: an opaque cursor holding the sort key of the last row of a page, stable
//! under concurrent inserts. Serialized as hex JSON: opaque to clients, checkable here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The sort key of the last row of a page: (time, id). Agents sort by id alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: String,
}

/// A token that is not a cursor this store handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCursor {
    #[error("not a cursor of this store")]
    Malformed,
    /// Well formed, but its id is not an event id: a cursor of another list.
    #[error("not a cursor of the event history")]
    NotAnEventCursor,
}

impl Cursor {
    pub fn new(at: DateTime<Utc>, id: impl Into<String>) -> Self {
        Self { at, id: id.into() }
    }

    pub fn encode(&self) -> String {
        hex::encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// `None` for the empty token (the first page).
    pub fn decode(token: &str) -> Result<Option<Self>, InvalidCursor> {
        if token.is_empty() {
            return Ok(None);
        }
        hex::decode(token)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Self>(&bytes).ok())
            // Every time this store hands out is within PostgreSQL's range: a crafted one outside
            // it (chrono reads signed years) would otherwise reach the database as an error.
            .filter(|cursor| (1..=9999).contains(&chrono::Datelike::year(&cursor.at)))
            .map(Some)
            .ok_or(InvalidCursor::Malformed)
    }

    /// A history cursor: rows are keyed by (time, event id), so a cursor with another kind of id
    /// was not one of the history's.
    pub fn decode_event(token: &str) -> Result<Option<(DateTime<Utc>, uuid::Uuid)>, InvalidCursor> {
        let Some(cursor) = Self::decode(token)? else { return Ok(None) };
        let id = uuid::Uuid::parse_str(&cursor.id).map_err(|_| InvalidCursor::NotAnEventCursor)?;
        Ok(Some((cursor.at, id)))
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Empty on the last page.
    pub next_cursor: String,
    /// The low watermark of the stream the list reflects (see [`crate::read_model::as_of_offset`]).
    pub as_of_offset: u64,
}

/// Turns the `limit + 1` rows a list query fetched into a page: the extra row only tells that
/// another page exists, and the cursor is the sort key of the last row shown.
pub(crate) fn paginate<R, T, E>(
    rows: Vec<R>,
    limit: u32,
    as_of_offset: u64,
    mut decode: impl FnMut(R) -> Result<(T, Cursor), E>,
) -> Result<Page<T>, E> {
    let shown = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > shown;
    let mut items = Vec::with_capacity(rows.len().min(shown));
    let mut last = None;
    for row in rows.into_iter().take(shown) {
        let (item, key) = decode(row)?;
        items.push(item);
        last = Some(key);
    }
    let next_cursor = match last {
        Some(key) if more => key.encode(),
        _ => String::new(),
    };
    Ok(Page { items, next_cursor, as_of_offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_outside_what_the_store_hands_out_are_refused_before_the_database() {
        let crafted = |at: &str| hex::encode(format!(r#"{{"at":"{at}","id":"0190a7d0-0000-7000-8000-000000000000"}}"#));
        assert_eq!(Cursor::decode(&crafted("-10000-01-01T00:00:00Z")), Err(InvalidCursor::Malformed));
        assert_eq!(Cursor::decode(&crafted("+10000-01-01T00:00:00Z")), Err(InvalidCursor::Malformed));
        assert!(Cursor::decode_event(&crafted("2026-12-01T00:00:00Z")).expect("in range").is_some());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Whatever a client sends, a cursor decodes or is refused: never a panic; and every
        /// cursor handed out decodes to itself.
        #[test]
        fn any_token_decodes_or_is_refused(token in ".{0,200}", seconds in 0i64..4_000_000_000, id in "[a-z0-9-]{0,40}") {
            let _ = Cursor::decode(&token);
            let _ = Cursor::decode_event(&token);
            let at = DateTime::<Utc>::from_timestamp(seconds, 0).expect("time");
            let cursor = Cursor::new(at, id);
            proptest::prop_assert_eq!(Cursor::decode(&cursor.encode()), Ok(Some(cursor)));
        }
    }

    #[test]
    fn event_cursors_need_an_event_id() {
        let at = DateTime::<Utc>::from_timestamp(1_790_000_000, 0).expect("time");
        let id = uuid::Uuid::now_v7();
        assert_eq!(Cursor::decode_event(&Cursor::new(at, id.to_string()).encode()), Ok(Some((at, id))));
        assert_eq!(Cursor::decode_event(&Cursor::new(at, "e-1").encode()), Err(InvalidCursor::NotAnEventCursor));
        assert_eq!(Cursor::decode("zz"), Err(InvalidCursor::Malformed));
        assert_eq!(Cursor::decode(""), Ok(None));
    }

    #[test]
    fn a_page_has_a_cursor_only_when_more_rows_follow() {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let rows = |n: usize| (0..n).map(|i| format!("r{i}")).collect::<Vec<_>>();
        let page = |n| paginate(rows(n), 2, 7, |id: String| Ok::<_, ()>((id.clone(), Cursor::new(at, id))));
        let full = page(3).expect("page");
        assert_eq!(full.items, ["r0", "r1"]);
        assert_eq!(Cursor::decode(&full.next_cursor), Ok(Some(Cursor::new(at, "r1"))));
        assert_eq!(full.as_of_offset, 7);
        let last = page(2).expect("page");
        assert_eq!((last.items.len(), last.next_cursor.as_str()), (2, ""));
        assert_eq!(page(0).expect("page").items, Vec::<String>::new());
    }
}
