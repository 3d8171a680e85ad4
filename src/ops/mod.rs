//! Operator commands on top of `aaa-xapi` and the database: one module per
//! command group, each using only `base` (and `subscriptions` using
//! `activity`), so no two modules import each other.

pub mod activity;
pub mod base;
pub mod gaps;
pub mod replay;
pub mod subscriptions;
pub mod webhooks;
