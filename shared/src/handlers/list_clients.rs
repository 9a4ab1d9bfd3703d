//! `GET /operators/clients`: every client with its online status and tags,
//! paged; `?tag=` lists only the clients carrying a tag.

use super::auth::OperatorAuth;
use super::input::{query_number, query_pairs};
use crate::domain::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, ONLINE_WINDOW_MS};
use crate::error::ApiError;
use crate::App;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListInput {
    pub limit: u32,
    pub page_token: Option<String>,
    pub tag: Option<String>,
}

impl ListInput {
    pub fn from_query(query: Option<&str>) -> Result<Self, ApiError> {
        let pairs = query_pairs(query);
        let limit = query_number(
            &pairs,
            "limit",
            1..=u64::from(MAX_LIST_LIMIT),
            Some(u64::from(DEFAULT_LIST_LIMIT)),
        )?
        .unwrap_or(u64::from(DEFAULT_LIST_LIMIT)) as u32;
        let page_token = pairs
            .iter()
            .rev()
            .find(|(k, _)| k == "page_token")
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty());
        let tag = pairs
            .iter()
            .rev()
            .find(|(k, _)| k == "tag")
            .map(|(_, v)| super::tags::checked_tag("tag", &serde_json::Value::from(v.as_str())))
            .transpose()?;
        Ok(ListInput {
            limit,
            page_token,
            tag,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientView {
    pub id: String,
    pub name: Option<String>,
    pub created_at: String,
    pub last_seen_at: Option<String>,
    pub status: &'static str,
    /// The client's newest sent id (0 when none): compare with what was
    /// read last to find the clients with new sends in one listing.
    pub sent_head: u64,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientList {
    pub clients: Vec<ClientView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

pub async fn list_clients(
    app: &App,
    _operator: &OperatorAuth,
    input: ListInput,
) -> Result<ClientList, ApiError> {
    let token = input.page_token.as_deref();
    let page = match &input.tag {
        Some(tag) => app.store.list_tagged(tag, input.limit, token).await?,
        None => app.store.list_clients(input.limit, token).await?,
    }
    .map_err(|_| ApiError::validation("page_token is not a token this endpoint issued"))?;
    let now = app.clock.now();
    let clients = page
        .clients
        .into_iter()
        .map(|c| {
            let online = c
                .last_seen_at
                .is_some_and(|t| now.millis() - t.millis() < ONLINE_WINDOW_MS);
            ClientView {
                id: c.id.to_string(),
                name: c.name,
                created_at: c.created_at.to_rfc3339(),
                last_seen_at: c.last_seen_at.map(|t| t.to_rfc3339()),
                status: if online { "online" } else { "offline" },
                sent_head: c.sent_head,
                tags: c.tags,
            }
        })
        .collect();
    Ok(ClientList {
        clients,
        next_page_token: page.next,
    })
}
