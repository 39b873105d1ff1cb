//! Builders of TenantPools, Secrets and Pods for the unit tests.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    ByteString,
    api::core::v1::{ContainerStatus, Pod, PodStatus, Secret},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time},
    jiff::Timestamp,
};

use crate::{
    crd::{CredentialsSecretRef, DatabaseSpec, TenantPool, TenantPoolSpec},
    desired::{FleetInputs, FleetPlan, plan},
};

/// A valid TenantPool `namespace/name` created `age_s` seconds after the epoch
/// base, reading credentials from Secret `db-creds`.
pub fn tenant_pool(namespace: &str, name: &str, created_s: i64) -> TenantPool {
    let mut tp = TenantPool::new(
        name,
        TenantPoolSpec {
            tenant_id: None,
            database: DatabaseSpec {
                host: "db.example".into(),
                port: 5432,
                dbname: "app".into(),
                ssl_mode: None,
                credentials_secret: CredentialsSecretRef {
                    name: "db-creds".into(),
                    username_key: "username".into(),
                    password_key: "password".into(),
                },
                ca_secret: None,
            },
            pool: Default::default(),
            leases: Default::default(),
            access: Default::default(),
            pooler_selector: None,
        },
    );
    tp.metadata.namespace = Some(namespace.into());
    tp.metadata.uid = Some(format!("uid-{namespace}-{name}"));
    tp.metadata.generation = Some(1);
    tp.metadata.creation_timestamp = Some(at(created_s));
    tp
}

/// A timestamp `s` seconds after 2026-01-01.
pub fn at(s: i64) -> Time {
    Time(Timestamp::from_second(1_767_225_600 + s).expect("valid time"))
}

/// Sets spec.tenantId.
pub fn with_id(mut tp: TenantPool, id: &str) -> TenantPool {
    tp.spec.tenant_id = Some(id.into());
    tp
}

/// Sets spec.poolerSelector to match labels.
pub fn selecting(mut tp: TenantPool, labels: &[(&str, &str)]) -> TenantPool {
    tp.spec.pooler_selector = Some(LabelSelector {
        match_labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        match_expressions: None,
    });
    tp
}

/// Marks the TenantPool as being deleted (with our finalizer).
pub fn deleting(mut tp: TenantPool, since_s: i64) -> TenantPool {
    tp.metadata.deletion_timestamp = Some(at(since_s));
    tp.metadata.finalizers = Some(vec![crate::crd::FINALIZER.into()]);
    tp
}

/// A credentials Secret with the given keys.
pub fn secret(
    namespace: &str,
    name: &str,
    data: &[(&str, &str)],
    resource_version: &str,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid: Some(format!("uid-secret-{namespace}-{name}")),
            resource_version: Some(resource_version.into()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The usual credentials Secret `db-creds` in `namespace`.
pub fn creds(namespace: &str, password: &str, resource_version: &str) -> Secret {
    secret(
        namespace,
        "db-creds",
        &[("username", "app"), ("password", password)],
        resource_version,
    )
}

/// A Running pooler pod with an IP and labels.
pub fn pod(name: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
    let mut all: BTreeMap<String, String> =
        BTreeMap::from([("app.kubernetes.io/name".into(), "teresa-pooler".into())]);
    all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("teresa".into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(all),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "pooler".into(),
                restart_count: 0,
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

/// A pod that has not started yet.
pub fn pending_pod(name: &str) -> Pod {
    let mut p = pod(name, "", &[]);
    if let Some(s) = p.status.as_mut() {
        s.phase = Some("Pending".into());
        s.pod_ip = None;
    }
    p
}

/// Runs the planner over plain values.
pub fn plan_of(tenant_pools: &[TenantPool], secrets: &[Secret], pods: &[Pod]) -> FleetPlan {
    let tenant_pools: Vec<Arc<TenantPool>> = tenant_pools.iter().cloned().map(Arc::new).collect();
    let secrets: BTreeMap<(String, String), Arc<Secret>> = secrets
        .iter()
        .map(|s| {
            (
                (
                    s.metadata.namespace.clone().unwrap_or_default(),
                    s.metadata.name.clone().unwrap_or_default(),
                ),
                Arc::new(s.clone()),
            )
        })
        .collect();
    let pods: Vec<Arc<Pod>> = pods.iter().cloned().map(Arc::new).collect();
    plan(&FleetInputs {
        tenant_pools: &tenant_pools,
        secrets: &secrets,
        pods: &pods,
        default_access: &Default::default(),
    })
}
