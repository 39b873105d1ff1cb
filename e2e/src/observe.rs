//! What a platform team sees and does: TenantPools and their Secrets applied
//! with server-side apply, `kubectl get tp` (the API server's Table view,
//! exactly what kubectl prints), status conditions, and Events.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::cluster::{Cluster, FIELD_MANAGER, tenant_pool_resource};
use crate::database::{Database, TenantDb};

/// A status condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// "True", "False" or "Unknown".
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// When the status last changed.
    pub last_transition_time: String,
}

/// A TenantPool as read back from the API server.
#[derive(Clone, Debug)]
pub struct TenantPoolView {
    /// The whole object.
    pub object: Value,
}

impl TenantPoolView {
    /// The condition of `type_`, if written.
    pub fn condition(&self, type_: &str) -> Option<Condition> {
        self.object["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .map(|c| Condition {
                status: c["status"].as_str().unwrap_or_default().to_string(),
                reason: c["reason"].as_str().unwrap_or_default().to_string(),
                message: c["message"].as_str().unwrap_or_default().to_string(),
                last_transition_time: c["lastTransitionTime"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            })
    }

    /// Whether condition `type_` is "True".
    pub fn is(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }

    /// `status.synced` ("2/2").
    pub fn synced(&self) -> String {
        self.object["status"]["synced"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// `status.configVersion`.
    pub fn config_version(&self) -> String {
        self.object["status"]["configVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// `status.observedGeneration == metadata.generation`.
    pub fn observed_current(&self) -> bool {
        self.object["status"]["observedGeneration"] == self.object["metadata"]["generation"]
    }

    /// A one-line summary for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "synced={} conditions={}",
            self.synced(),
            self.object["status"]["conditions"]
        )
    }
}

/// An Event on a TenantPool.
#[derive(Clone, Debug)]
pub struct EventView {
    /// Normal or Warning.
    pub type_: String,
    /// CamelCase reason.
    pub reason: String,
    /// The note.
    pub note: String,
    /// How often it happened (`series.count`, else 1).
    pub count: i32,
}

/// The suite's view of one namespace where TenantPools live.
#[derive(Clone)]
pub struct Tenants {
    /// The namespace.
    pub namespace: String,
    cluster: Cluster,
}

impl Tenants {
    /// TenantPools and Secrets of `namespace`.
    pub fn new(cluster: &Cluster, namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            cluster: cluster.clone(),
        }
    }

    fn api(&self) -> Api<DynamicObject> {
        self.cluster.tenant_pools(&self.namespace)
    }

    /// Applies a credentials Secret with `username` and `password` keys.
    pub async fn apply_credentials(&self, name: &str, tenant: &TenantDb) {
        let secret = Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                (
                    "username".to_string(),
                    ByteString(tenant.user.clone().into_bytes()),
                ),
                (
                    "password".to_string(),
                    ByteString(tenant.password.clone().into_bytes()),
                ),
            ])),
            ..Default::default()
        };
        self.apply_secret(secret).await;
    }

    /// Applies a Secret (server-side apply).
    pub async fn apply_secret(&self, secret: Secret) {
        let name = secret.metadata.name.clone().expect("named");
        Api::<Secret>::namespaced(self.cluster.client.clone(), &self.namespace)
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .unwrap_or_else(|e| panic!("apply Secret {name}: {e}"));
    }

    /// Applies TenantPool `name` with `spec`.
    pub async fn apply(&self, name: &str, spec: Value) -> Result<(), kube::Error> {
        let object = json!({
            "apiVersion": "teresa.dev/v1alpha1",
            "kind": "TenantPool",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        });
        self.api()
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
            .map(|_| ())
    }

    /// Applies TenantPool `name`, panicking if admission refuses it.
    pub async fn apply_ok(&self, name: &str, spec: Value) {
        self.apply(name, spec)
            .await
            .unwrap_or_else(|e| panic!("apply TenantPool {name}: {e}"));
    }

    /// Merge-patches TenantPool `name`'s spec (`kubectl patch --type merge`).
    pub async fn patch_spec(&self, name: &str, spec: Value) {
        self.api()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .unwrap_or_else(|e| panic!("patch TenantPool {name}: {e}"));
    }

    /// Deletes TenantPool `name` (it goes once the operator's finalizer is done).
    pub async fn delete(&self, name: &str) {
        self.api()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete TenantPool {name}: {e}"));
    }

    /// TenantPool `name`, or None once it is gone.
    pub async fn get(&self, name: &str) -> Option<TenantPoolView> {
        self.api()
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("get TenantPool {name}: {e}"))
            .map(|o| TenantPoolView {
                object: serde_json::to_value(o).expect("JSON"),
            })
    }

    /// `kubectl get tp`: one map of column name to cell per TenantPool, from
    /// the API server's Table rendering of the CRD's printer columns.
    pub async fn table(&self) -> Vec<BTreeMap<String, String>> {
        let resource = tenant_pool_resource();
        let url = format!(
            "/apis/{}/{}/namespaces/{}/{}",
            resource.group, resource.version, self.namespace, resource.plural
        );
        let request = http::Request::get(url)
            .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
            .body(Vec::new())
            .expect("request");
        let table: Value = self
            .cluster
            .client
            .request(request)
            .await
            .expect("GET the TenantPool table");
        let columns: Vec<String> = table["columnDefinitions"]
            .as_array()
            .expect("columnDefinitions")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect();
        table["rows"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .cloned()
                    .zip(
                        row["cells"]
                            .as_array()
                            .expect("cells")
                            .iter()
                            .map(|cell| match cell {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            }),
                    )
                    .collect()
            })
            .collect()
    }

    /// The `kubectl get tp` row of `name`.
    pub async fn row(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.table()
            .await
            .into_iter()
            .find(|row| row.get("Name").map(String::as_str) == Some(name))
    }

    /// Events regarding TenantPool `name`, oldest first.
    pub async fn events(&self, name: &str) -> Vec<EventView> {
        let api: Api<Event> = Api::namespaced(self.cluster.client.clone(), &self.namespace);
        let mut events: Vec<Event> = api
            .list(&ListParams::default())
            .await
            .expect("list Events")
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("TenantPool") && r.name.as_deref() == Some(name)
                })
            })
            .collect();
        events.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
        events
            .into_iter()
            .map(|e| EventView {
                type_: e.type_.unwrap_or_default(),
                reason: e.reason.unwrap_or_default(),
                note: e.note.unwrap_or_default(),
                count: e.series.map(|s| s.count).unwrap_or(1),
            })
            .collect()
    }
}

/// The spec of a TenantPool reaching `tenant`'s database on `db`, its
/// credentials in Secret `secret`, with a small pool (`maxConnections`).
pub fn spec(db: &Database, tenant: &TenantDb, secret: &str, max_connections: u32) -> Value {
    json!({
        "database": {
            "host": db.pg.host(),
            "port": db.pg.port(),
            "dbname": tenant.dbname,
            "sslMode": "disable",
            "credentialsSecret": {"name": secret},
        },
        "pool": {"maxConnections": max_connections, "minConnections": 1},
    })
}
