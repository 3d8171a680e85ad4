//! A client for X's webhooks, subscriptions and replay APIs, used by the
//! operator CLI and the watermark service.
//!
//! Subscribing (and checking) needs OAuth 1.0a user context; everything else
//! the app's bearer token. Every call has a timeout and is counted; reads are
//! retried with backoff, writes never blindly.

mod access;
mod activity;
mod client;
mod credentials;
mod error;
mod events;

pub use access::{Access, OFFLINE_ACCESS, scopes_for, uncovered};
pub use activity::{
    AccountStatus, ActivityFilter, ActivitySubscription, BulkDeleted, MAX_TAG, MigrationStatus,
    NewActivitySubscription, default_tag, migrated_event_types, migration_status, plan_migration,
};
pub use client::{ReplayJob, SubscriptionCount, Webhook, XClient};
pub use credentials::{Credentials, XApiArgs};
pub use error::{Reason, XError};
