//! Errors of the Kubernetes backend, and their mapping to the core's [`BackendError`].

use agentbox_core::backend::BackendError;

/// What can go wrong talking to Kubernetes.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "no kubernetes configuration found ({0}): set KUBECONFIG to a kubeconfig file, or run the server inside a cluster"
    )]
    NoConfig(String),
    #[error(
        "the kubernetes api at {url} is not reachable: {message}: check that the cluster runs and that KUBECONFIG points at it"
    )]
    Unreachable { url: String, message: String },
    #[error(
        "the agentbox CRDs are not installed in the cluster (no {0}): install them with `kubectl apply -f deploy/crds/` \
         or `kubectl apply -k deploy/kustomize`"
    )]
    CrdsMissing(String),
    #[error(
        "sandboxpool {namespace}/{pool} does not exist in the cluster: the pool's SandboxPool object must exist before \
         its slots (it owns their pods)"
    )]
    PoolObjectMissing { namespace: String, pool: String },
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("malformed object in the cluster: {0}: fix or delete it with kubectl")]
    BadObject(String),
    #[error("kubernetes api error: {0}")]
    Api(#[from] kube::Error),
}

impl From<KubeError> for BackendError {
    fn from(e: KubeError) -> Self {
        match e {
            KubeError::PoolObjectMissing { .. } => BackendError::Invalid(e.to_string()),
            KubeError::Invalid(m) => BackendError::Invalid(m),
            e => BackendError::Runtime(e.to_string()),
        }
    }
}

/// Whether a kube error is an API answer with `code`.
pub(crate) fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}
