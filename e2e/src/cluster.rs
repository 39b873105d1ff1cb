//! The cluster under test: a kube client from `TERESA_E2E_KUBECONFIG`, the
//! TenantPool CRD from `crds/`, one namespace per scenario, and the sweep
//! that removes what an earlier (perhaps aborted) scenario left behind.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config, ResourceExt};
use tokio::sync::{Mutex, MutexGuard};

/// The environment variable naming the kubeconfig of the cluster under test.
pub const KUBECONFIG_ENV: &str = "TERESA_E2E_KUBECONFIG";
/// Field manager of everything the suite applies.
pub const FIELD_MANAGER: &str = "teresa-e2e";
/// Label on every namespace the suite creates, so a later run can sweep it.
pub const NAMESPACE_LABEL: &str = "teresa.dev/e2e";

/// One scenario at a time: the operator watches TenantPools cluster-wide, so
/// two scenarios' operators would fight over each other's.
static EXCLUSIVE: Mutex<()> = Mutex::const_new(());

/// A connection to the cluster under test.
#[derive(Clone)]
pub struct Cluster {
    /// Admin client (the kubeconfig's current context).
    pub client: Client,
    /// The parsed kubeconfig, from which operator kubeconfigs are derived.
    pub kubeconfig: Kubeconfig,
    /// Where the kubeconfig came from.
    pub kubeconfig_path: PathBuf,
}

/// The TenantPool resource, as a platform team's tools see it.
pub fn tenant_pool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("teresa.dev", "v1alpha1", "TenantPool"),
        "tenantpools",
    )
}

impl Cluster {
    /// Connects to the cluster of `TERESA_E2E_KUBECONFIG`, takes the suite's
    /// exclusive slot, installs the CRD and sweeps earlier scenarios' leftovers.
    ///
    /// Panics (the scenario fails, never passes silently) when the variable is
    /// not set or the cluster does not answer.
    pub async fn connect() -> (Self, MutexGuard<'static, ()>) {
        let Some(path) = std::env::var_os(KUBECONFIG_ENV).map(PathBuf::from) else {
            panic!(
                "{KUBECONFIG_ENV} is not set: the end-to-end scenarios need a Kubernetes API server \
                 (kind, k3d or a bare kube-apiserver). Run them with \
                 `{KUBECONFIG_ENV}=/path/to/admin.kubeconfig cargo test -p teresa-e2e -- --include-ignored` \
                 (README: End-to-end tests)"
            );
        };
        let guard = EXCLUSIVE.lock().await;
        let kubeconfig = Kubeconfig::read_from(&path)
            .unwrap_or_else(|e| panic!("cannot read {KUBECONFIG_ENV}={}: {e}", path.display()));
        let config =
            Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
                .await
                .unwrap_or_else(|e| panic!("kubeconfig {} is unusable: {e}", path.display()));
        let client = Client::try_from(config).expect("kube client");
        let cluster = Self {
            client,
            kubeconfig,
            kubeconfig_path: path,
        };
        cluster
            .client
            .apiserver_version()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the API server of {} does not answer: {e}",
                    cluster.kubeconfig_path.display()
                )
            });
        cluster.sweep().await;
        cluster.install_crd().await;
        (cluster, guard)
    }

    /// Applies `crds/tenantpool.yaml` (what `teresa-operator crd` prints) and
    /// waits until the API server serves it.
    pub async fn install_crd(&self) {
        let text = std::fs::read_to_string(crate::repo_root().join("crds/tenantpool.yaml"))
            .expect("read crds/tenantpool.yaml");
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("parse the CRD");
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        api.patch(
            &crd.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply the TenantPool CRD");
        crate::eventually(Duration::from_secs(30), "the CRD is established", || {
            let api = api.clone();
            let name = crd.name_any();
            async move {
                let crd = api.get(&name).await.map_err(|e| e.to_string())?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established
                    .then_some(())
                    .ok_or_else(|| "not established".to_string())
            }
        })
        .await;
        // Discovery catches up a moment after Established.
        let tenant_pools = self.tenant_pools_all();
        crate::eventually(Duration::from_secs(30), "TenantPools are served", || {
            let api = tenant_pools.clone();
            async move {
                api.list(&ListParams::default().limit(1))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await;
    }

    /// Creates a namespace `e2e-<tag>-<random>` labelled for the sweep.
    pub async fn namespace(&self, tag: &str) -> String {
        let name = format!("e2e-{tag}-{}", crate::random_suffix());
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {NAMESPACE_LABEL: "true"}}
        }))
        .expect("namespace object");
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        name
    }

    /// TenantPools in every namespace.
    pub fn tenant_pools_all(&self) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &tenant_pool_resource())
    }

    /// TenantPools in `namespace`.
    pub fn tenant_pools(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &tenant_pool_resource())
    }

    /// Removes what earlier scenarios left: their TenantPools (finalizers
    /// stripped, since their operator is gone), pods, cluster-wide RBAC and
    /// namespaces. A bare API server has no namespace controller, so the
    /// namespaces may stay Terminating; nothing in them matters any more.
    pub async fn sweep(&self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let labelled = namespaces
            .list(&ListParams::default().labels(&format!("{NAMESPACE_LABEL}=true")))
            .await
            .expect("list the suite's namespaces");
        for namespace in labelled {
            let ns = namespace.name_any();
            let tenant_pools = self.tenant_pools(&ns);
            for tp in tenant_pools
                .list(&ListParams::default())
                .await
                .expect("list TenantPools")
            {
                let name = tp.name_any();
                let _ = tenant_pools
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
                let _ = tenant_pools.delete(&name, &DeleteParams::default()).await;
            }
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            let _ = pods
                .delete_collection(
                    &DeleteParams::default().grace_period(0),
                    &ListParams::default(),
                )
                .await;
            let suffix = format!("-{ns}");
            let roles: Api<ClusterRole> = Api::all(self.client.clone());
            let bindings: Api<ClusterRoleBinding> = Api::all(self.client.clone());
            for role in roles
                .list(&ListParams::default())
                .await
                .expect("list ClusterRoles")
            {
                if role.name_any().ends_with(&suffix) {
                    let _ = roles
                        .delete(&role.name_any(), &DeleteParams::default())
                        .await;
                }
            }
            for binding in bindings
                .list(&ListParams::default())
                .await
                .expect("list ClusterRoleBindings")
            {
                if binding.name_any().ends_with(&suffix) {
                    let _ = bindings
                        .delete(&binding.name_any(), &DeleteParams::default())
                        .await;
                }
            }
            if namespace.metadata.deletion_timestamp.is_none() {
                let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
            }
        }
    }
}
