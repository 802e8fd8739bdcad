use std::path::PathBuf;
use std::sync::Arc;

use sandbox_core::{
    Capabilities, Ceiling, CeilingConfig, Limits, Manager, ManagerConfig, ManagerError, Policy,
    PolicySpec, RunError, RunFuture, RunOptions, RunOutcome, RunRequest, Sandbox, Technology,
};

/// A backend that pretends nothing; it only reports what it is.
#[derive(Debug)]
struct Fake {
    technology: Technology,
    available: bool,
}

impl Sandbox for Fake {
    fn technology(&self) -> Technology {
        self.technology
    }
    fn is_available(&self) -> bool {
        self.available
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: self.technology.as_str(),
            kernel_enforced: matches!(self.technology, Technology::Landlock),
            ..Capabilities::default()
        }
    }
    fn system_read_paths(&self) -> Vec<PathBuf> {
        vec![PathBuf::from("/usr")]
    }
    fn run(
        &self,
        _request: RunRequest,
        _options: RunOptions,
        _ceiling: &Arc<Ceiling>,
    ) -> RunFuture {
        Box::pin(async { Ok(RunOutcome::default()) })
    }
}

fn fakes(landlock: bool) -> Vec<Arc<dyn Sandbox>> {
    [
        (Technology::Landlock, landlock),
        (Technology::Seccomp, false),
        (Technology::Soft, true),
        (Technology::None, true),
    ]
    .into_iter()
    .map(|(technology, available)| {
        Arc::new(Fake {
            technology,
            available,
        }) as Arc<dyn Sandbox>
    })
    .collect()
}

fn config(technology: Technology) -> ManagerConfig {
    ManagerConfig {
        technology,
        ceiling: Ceiling::unrestricted(),
        max_concurrent_runs: 2,
    }
}

#[test]
fn auto_takes_the_strongest_available() {
    let m = Manager::new(config(Technology::Auto), fakes(true)).unwrap();
    assert_eq!(m.backend().technology(), Technology::Landlock);
    let m = Manager::new(config(Technology::Auto), fakes(false)).unwrap();
    assert_eq!(m.backend().technology(), Technology::Soft);
}

#[test]
fn naming_an_unavailable_technology_fails_construction() {
    let err = Manager::new(config(Technology::Landlock), fakes(false)).unwrap_err();
    assert!(matches!(
        err,
        ManagerError::Unavailable {
            technology: Technology::Landlock,
            ..
        }
    ));
    assert!(err.to_string().contains("landlock"));
    assert!(matches!(
        Manager::new(config(Technology::None), fakes(false)),
        Ok(m) if m.backend().technology() == Technology::None
    ));
    assert_eq!("soft".parse::<Technology>().unwrap(), Technology::Soft);
    assert!("bwrap".parse::<Technology>().is_err());
}

#[test]
fn a_system_path_overlapping_a_forbidden_path_fails_construction() {
    let ceiling = Ceiling::new(CeilingConfig {
        read_roots: vec!["/".into()],
        write_roots: vec![],
        forbidden: vec!["/usr/local/cordon".into()],
        max: Limits::MAX,
        defaults: Limits::default(),
    })
    .unwrap();
    let err = Manager::new(
        ManagerConfig {
            technology: Technology::Auto,
            ceiling,
            max_concurrent_runs: 1,
        },
        fakes(true),
    )
    .unwrap_err();
    assert!(matches!(err, ManagerError::SystemPathForbidden(_)));
}

#[tokio::test]
async fn required_kernel_enforcement_fails_on_a_soft_host() {
    let m = Manager::new(config(Technology::Auto), fakes(false)).unwrap();
    let spec = PolicySpec {
        require_kernel_enforcement: true,
        ..PolicySpec::default()
    };
    let request = RunRequest::new(vec!["true".into()], m.policy(&spec).unwrap()).unwrap();
    let err = m.run(request, RunOptions::default()).await.unwrap_err();
    assert!(matches!(
        err,
        RunError::KernelEnforcementUnavailable { backend: "soft" }
    ));
    let request = RunRequest::new(vec!["true".into()], Policy::default()).unwrap();
    assert!(m.run(request, RunOptions::default()).await.is_ok());
}

#[tokio::test]
async fn the_concurrency_bound_refuses_instead_of_queueing() {
    let m = Manager::new(config(Technology::Auto), fakes(true)).unwrap();
    let request = RunRequest::new(vec!["true".into()], Policy::default()).unwrap();
    let a = m.run(request.clone(), RunOptions::default());
    let b = m.run(request.clone(), RunOptions::default());
    let c = m.run(request.clone(), RunOptions::default()).await;
    assert!(matches!(c, Err(RunError::Busy { limit: 2 })));
    a.await.unwrap();
    drop(b);
    assert!(m.run(request, RunOptions::default()).await.is_ok());
}
