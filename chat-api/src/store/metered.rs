//! Latency and error metrics around any [`MessageStore`]: `api_store_op_seconds{op}` and
//! `api_store_errors_total{op}`, where `op` is the trait method.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use shared::protocol::Message;
use shared::Id;

use super::{
    Change, Changed, ChangesPage, Chat, Cursor, Insert, Marker, Markers, MessageStore, Role,
    StoreError, Unread,
};
use crate::telemetry::{store_op, STORE_ERRORS_TOTAL, STORE_OP_SECONDS};

async fn observe<T>(
    op: &'static str,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = fut.await;
    metrics::histogram!(STORE_OP_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!(STORE_ERRORS_TOTAL, "op" => op).increment(1);
    }
    result
}

/// The inner store, with every call timed and every failure counted.
pub struct MeteredStore {
    inner: Arc<dyn MessageStore>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn MessageStore>) -> MeteredStore {
        MeteredStore { inner }
    }
}

#[async_trait]
impl MessageStore for MeteredStore {
    async fn create_chat(&self, chat: &Chat, members: &[String]) -> Result<(), StoreError> {
        observe(store_op::CREATE_CHAT, self.inner.create_chat(chat, members)).await
    }
    async fn get_chat(&self, chat_id: Id) -> Result<Option<Chat>, StoreError> {
        observe(store_op::GET_CHAT, self.inner.get_chat(chat_id)).await
    }
    async fn user_chats(
        &self,
        user: &str,
        after: Option<Id>,
        limit: usize,
    ) -> Result<Vec<Chat>, StoreError> {
        observe(
            store_op::USER_CHATS,
            self.inner.user_chats(user, after, limit),
        )
        .await
    }
    async fn add_members(&self, chat_id: Id, users: &[String]) -> Result<(), StoreError> {
        observe(
            store_op::ADD_MEMBERS,
            self.inner.add_members(chat_id, users),
        )
        .await
    }
    async fn remove_member(&self, chat_id: Id, user: &str) -> Result<bool, StoreError> {
        observe(
            store_op::REMOVE_MEMBER,
            self.inner.remove_member(chat_id, user),
        )
        .await
    }
    async fn is_member(&self, chat_id: Id, user: &str) -> Result<bool, StoreError> {
        observe(store_op::IS_MEMBER, self.inner.is_member(chat_id, user)).await
    }
    async fn members(&self, chat_id: Id) -> Result<Vec<String>, StoreError> {
        observe(store_op::MEMBERS, self.inner.members(chat_id)).await
    }
    async fn insert_message(&self, message: &Message) -> Result<Insert, StoreError> {
        observe(store_op::INSERT_MESSAGE, self.inner.insert_message(message)).await
    }
    async fn insert_message_before(
        &self,
        message: &Message,
        deadline: Instant,
    ) -> Result<Insert, StoreError> {
        observe(
            store_op::INSERT_MESSAGE,
            self.inner.insert_message_before(message, deadline),
        )
        .await
    }
    async fn history(
        &self,
        chat_id: Id,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        observe(
            store_op::HISTORY,
            self.inner.history(chat_id, cursor, limit),
        )
        .await
    }
    async fn advance_marker(
        &self,
        chat_id: Id,
        user: &str,
        marker: Marker,
        message_id: Id,
    ) -> Result<bool, StoreError> {
        observe(
            store_op::ADVANCE_MARKER,
            self.inner.advance_marker(chat_id, user, marker, message_id),
        )
        .await
    }
    async fn markers(&self, chat_id: Id) -> Result<Vec<Markers>, StoreError> {
        observe(store_op::MARKERS, self.inner.markers(chat_id)).await
    }
    async fn read_markers(
        &self,
        user: &str,
        chat_ids: &[Id],
    ) -> Result<HashMap<Id, Id>, StoreError> {
        observe(
            store_op::READ_MARKERS,
            self.inner.read_markers(user, chat_ids),
        )
        .await
    }
    async fn count_unread(
        &self,
        chat_id: Id,
        user: &str,
        after: Option<Id>,
        scan_max: usize,
    ) -> Result<Unread, StoreError> {
        observe(
            store_op::COUNT_UNREAD,
            self.inner.count_unread(chat_id, user, after, scan_max),
        )
        .await
    }
    async fn get_message(
        &self,
        chat_id: Id,
        message_id: Id,
    ) -> Result<Option<Message>, StoreError> {
        observe(
            store_op::GET_MESSAGE,
            self.inner.get_message(chat_id, message_id),
        )
        .await
    }
    async fn change_message(
        &self,
        chat_id: Id,
        message_id: Id,
        change: &Change,
        change_id: Id,
        deadline: Instant,
    ) -> Result<Changed, StoreError> {
        observe(
            store_op::CHANGE_MESSAGE,
            self.inner
                .change_message(chat_id, message_id, change, change_id, deadline),
        )
        .await
    }
    async fn changes(
        &self,
        chat_id: Id,
        after: Id,
        limit: usize,
    ) -> Result<ChangesPage, StoreError> {
        observe(store_op::CHANGES, self.inner.changes(chat_id, after, limit)).await
    }
    async fn role(&self, chat_id: Id, user: &str) -> Result<Option<Role>, StoreError> {
        observe(store_op::ROLE, self.inner.role(chat_id, user)).await
    }
    async fn set_role(&self, chat_id: Id, user: &str, role: Role) -> Result<bool, StoreError> {
        observe(store_op::SET_ROLE, self.inner.set_role(chat_id, user, role)).await
    }
    async fn admins(&self, chat_id: Id) -> Result<Vec<String>, StoreError> {
        observe(store_op::ADMINS, self.inner.admins(chat_id)).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        observe(store_op::PING, self.inner.ping()).await
    }
}
