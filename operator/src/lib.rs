//! `teresa-operator`, Teresa's control plane. It turns `TenantPool` resources
//! into pooler configurations and tells the user on each resource what happened.
//!
//! Where things are decided:
//! - [`crd`]: the TenantPool type, the source of the CRD schema;
//! - [`desired`]: what every pooler pod should hold (pure);
//! - [`status`]: what a TenantPool's status says and which Events it deserves (pure);
//! - [`push`]: the task that brings pooler pods to their snapshots over mTLS;
//! - [`controller`]: fetches inputs from the API server and applies the outputs;
//! - [`cli`], [`http`], [`metrics`], [`leader`]: the process around them.

#![forbid(unsafe_code)]

pub mod cli;
pub mod controller;
pub mod crd;
pub mod desired;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod push;
pub mod selector;
pub mod status;
