//! `teresa-pooler`, Teresa's data plane: one PostgreSQL connection pool per
//! tenant, leased to clients over a gRPC API with TLS, with SQL executed on
//! the leased connections, health probes, Prometheus metrics, and an admin
//! API through which the operator applies configurations live.
//!
//! Where things live: [`config`] (the tenant schema and its validation),
//! [`pool`] (a tenant's pool), [`tenants`] (all pools; applying a config),
//! [`lease`] (the lease table), [`session`] (a checked-out connection and
//! its reset), [`classify`] (what a one-shot statement may leave behind),
//! [`execute`] and [`values`] (running SQL and streaming results),
//! [`service`] (the lease API), [`access`] (who may use which tenant),
//! [`admin`] (the admin API), [`tls`] (listeners and client identities),
//! [`http`] (probes and metrics), [`server`] (running it all), and
//! [`devdb`] and [`certs`] (a throwaway PostgreSQL and dev certificates).

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod certs;
pub mod classify;
pub mod config;
pub mod devdb;
pub mod error;
pub mod execute;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod pool;
pub mod server;
pub mod service;
pub mod session;
pub mod state;
pub mod tenants;
pub mod tls;
pub mod upstream_tls;
pub mod values;
