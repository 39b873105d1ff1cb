//! `charts/teresa` rendered with its default values into a namespace (by
//! `charts/check.sh --render`, the same Helm library the chart checks use), so
//! the suite installs exactly the chart's RBAC and runs the programs with the
//! chart's arguments and labels.

use std::collections::BTreeMap;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams};
use serde_json::Value;

use crate::cluster::{Cluster, FIELD_MANAGER};

/// The chart's objects for one release namespace.
#[derive(Clone, Debug)]
pub struct Chart {
    /// The release namespace.
    pub namespace: String,
    objects: Vec<Value>,
}

impl Chart {
    /// Renders the chart with default values into `namespace`.
    pub fn render(namespace: &str) -> Self {
        let script = crate::repo_root().join("charts/check.sh");
        let output = Command::new("bash")
            .arg(&script)
            .args(["--render", namespace])
            .output()
            .expect("run charts/check.sh --render (needs bash and python3 with venv)");
        assert!(
            output.status.success(),
            "charts/check.sh --render {namespace} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).expect("the render is UTF-8");
        let objects = serde_yaml::Deserializer::from_str(&text)
            .map(|doc| serde::Deserialize::deserialize(doc).expect("a rendered object is YAML"))
            .filter(|v: &Value| !v.is_null())
            .collect();
        Self {
            namespace: namespace.to_string(),
            objects,
        }
    }

    fn objects_of(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }

    fn one<T: serde::de::DeserializeOwned>(&self, kind: &str, name: &str) -> T {
        let object = self
            .objects_of(kind)
            .find(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"));
        serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{kind} {name}: {e}"))
    }

    fn all<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Vec<T> {
        self.objects_of(kind)
            .map(|o| serde_json::from_value(o.clone()).unwrap_or_else(|e| panic!("{kind}: {e}")))
            .collect()
    }

    /// The operator Deployment's pod template.
    pub fn operator_template(&self) -> PodTemplateSpec {
        let deployment: Deployment = self.one("Deployment", "teresa-operator");
        deployment.spec.template
    }

    /// The operator container (its arguments and environment).
    pub fn operator_container(&self) -> Container {
        self.operator_template()
            .spec
            .expect("pod spec")
            .containers
            .into_iter()
            .find(|c| c.name == "operator")
            .expect("the operator container")
    }

    /// The operator's ServiceAccount name.
    pub fn operator_service_account(&self) -> String {
        self.operator_template()
            .spec
            .and_then(|s| s.service_account_name)
            .expect("the operator pod names its ServiceAccount")
    }

    /// The pooler Deployment's pod template (labels, ServiceAccount).
    pub fn pooler_template(&self) -> PodTemplateSpec {
        let deployment: Deployment = self.one("Deployment", "teresa-pooler");
        deployment.spec.template
    }

    /// The pooler container (its arguments).
    pub fn pooler_container(&self) -> Container {
        self.pooler_template()
            .spec
            .expect("pod spec")
            .containers
            .into_iter()
            .find(|c| c.name == "pooler")
            .expect("the pooler container")
    }

    /// The labels of pooler pods.
    pub fn pooler_labels(&self) -> BTreeMap<String, String> {
        self.pooler_template()
            .metadata
            .and_then(|m| m.labels)
            .unwrap_or_default()
    }

    /// Applies the chart's ServiceAccounts and RBAC (server-side apply), as
    /// `helm install` would; the rest of the chart runs as local processes.
    pub async fn apply_rbac(&self, cluster: &Cluster) {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let ns = &self.namespace;
        for sa in self.all::<ServiceAccount>("ServiceAccount") {
            let api: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), ns);
            let name = kube::ResourceExt::name_any(&sa);
            api.patch(&name, &params, &Patch::Apply(&sa))
                .await
                .unwrap_or_else(|e| panic!("apply ServiceAccount {name}: {e}"));
        }
        for role in self.all::<ClusterRole>("ClusterRole") {
            let api: Api<ClusterRole> = Api::all(cluster.client.clone());
            let name = kube::ResourceExt::name_any(&role);
            api.patch(&name, &params, &Patch::Apply(&role))
                .await
                .unwrap_or_else(|e| panic!("apply ClusterRole {name}: {e}"));
        }
        for binding in self.all::<ClusterRoleBinding>("ClusterRoleBinding") {
            let api: Api<ClusterRoleBinding> = Api::all(cluster.client.clone());
            let name = kube::ResourceExt::name_any(&binding);
            api.patch(&name, &params, &Patch::Apply(&binding))
                .await
                .unwrap_or_else(|e| panic!("apply ClusterRoleBinding {name}: {e}"));
        }
        for role in self.all::<Role>("Role") {
            let api: Api<Role> = Api::namespaced(cluster.client.clone(), ns);
            let name = kube::ResourceExt::name_any(&role);
            api.patch(&name, &params, &Patch::Apply(&role))
                .await
                .unwrap_or_else(|e| panic!("apply Role {name}: {e}"));
        }
        for binding in self.all::<RoleBinding>("RoleBinding") {
            let api: Api<RoleBinding> = Api::namespaced(cluster.client.clone(), ns);
            let name = kube::ResourceExt::name_any(&binding);
            api.patch(&name, &params, &Patch::Apply(&binding))
                .await
                .unwrap_or_else(|e| panic!("apply RoleBinding {name}: {e}"));
        }
    }
}

/// `args` with each `--flag=value` whose flag is in `overrides` replaced (and
/// missing overrides appended): the chart's command line, with local paths
/// and ports.
pub fn override_args(args: &[String], overrides: &[(&str, String)]) -> Vec<String> {
    let mut out: Vec<String> = args
        .iter()
        .map(|arg| {
            let flag = arg.split('=').next().unwrap_or_default();
            match overrides.iter().find(|(f, _)| *f == flag) {
                Some((f, value)) => format!("{f}={value}"),
                None => arg.clone(),
            }
        })
        .collect();
    for (flag, value) in overrides {
        if !args.iter().any(|a| a.split('=').next() == Some(flag)) {
            out.push(format!("{flag}={value}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
