//! Presence rows in PostgreSQL (see `rows` for the statements both stores
//! share).

use super::PostgresStore;
use crate::store::rows::{self, PresenceRow};
use crate::store::StoreError;
use confab_proto::internal::v1::PresenceUpdate;
use sqlx::Row;

/// PostgreSQL text cannot hold NUL: no such user exists.
fn storable(ids: &[&str]) -> Vec<String> {
    ids.iter()
        .filter(|id| !id.contains('\0'))
        .map(|id| id.to_string())
        .collect()
}

impl PostgresStore {
    pub(super) async fn direct_partners_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        if user.contains('\0') {
            return Ok(Vec::new());
        }
        let rows = self
            .fetch_all(|| sqlx::query(rows::DIRECT_PARTNERS).bind(user))
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    pub(super) async fn shared_with_of(
        &self,
        caller: &str,
        users: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        let users = storable(users);
        if users.is_empty() || caller.contains('\0') {
            return Ok(Vec::new());
        }
        let sql = rows::shared_with_sql(users.len());
        let rows = self
            .fetch_all(|| {
                users
                    .iter()
                    .fold(sqlx::query(&sql).bind(caller), |q, u| q.bind(u.as_str()))
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    pub(super) async fn presence_of(&self, users: &[&str]) -> Result<Vec<PresenceRow>, StoreError> {
        let users = storable(users);
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let sql = rows::presence_sql(users.len());
        let rows = self
            .fetch_all(|| {
                users
                    .iter()
                    .fold(sqlx::query(&sql), |q, u| q.bind(u.as_str()))
            })
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    pub(super) async fn record(&self, updates: &[PresenceUpdate]) -> Result<(), StoreError> {
        self.again(|| async {
            let mut tx = self.pool.begin().await?;
            rows::record_presence::<sqlx::Postgres>(&mut tx, updates).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
