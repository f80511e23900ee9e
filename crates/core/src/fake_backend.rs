//! An in-memory [`Backend`] for unit tests of the engine: slots are records, exec echoes.
//!
//! Images whose reference starts with `broken` fail to prepare, like an image that cannot be pulled.
//! `exec` understands `exit N` and otherwise echoes its argv joined by spaces.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::backend::*;
use crate::model::{ContainerSpec, RegistryCredential};

#[derive(Default)]
pub struct FakeBackend {
    slots: Mutex<BTreeMap<String, SlotObservation>>,
    counter: AtomicU64,
    /// Every call, in order (`create p-1`, `switch p-1 host`, ...), for assertions.
    pub calls: Mutex<Vec<String>>,
}

impl FakeBackend {
    pub fn new() -> Self {
        Self::default()
    }
    /// Simulate the main container of a slot dying.
    pub fn kill_main(&self, slot_id: &str, exit_code: i32, oom: bool) {
        if let Some(s) = self.slots.lock().get_mut(slot_id)
            && let Some(c) = s.containers.first_mut()
        {
            c.state = ContainerState::Exited { exit_code: Some(exit_code), oom_killed: oom };
        }
    }
    fn containers(&self, specs: &[ContainerSpec]) -> Vec<ContainerObservation> {
        specs
            .iter()
            .map(|c| ContainerObservation {
                name: c.name.clone(),
                image: c.image.clone(),
                container_id: format!("fake-{}", self.counter.fetch_add(1, Ordering::Relaxed)),
                state: ContainerState::Running { pid: 1 },
            })
            .collect()
    }
    fn check_images(specs: &[ContainerSpec]) -> Result<(), BackendError> {
        match specs.iter().find(|c| c.image.starts_with("broken")) {
            Some(c) => Err(BackendError::Image { image: c.image.clone(), message: "pull failed".into() }),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn prepare_image(&self, image: &str, _: &[RegistryCredential]) -> Result<(), BackendError> {
        if image.starts_with("broken") {
            return Err(BackendError::Image { image: image.into(), message: "pull failed".into() });
        }
        Ok(())
    }
    async fn create_slot(&self, spec: &SlotSpec) -> Result<SlotObservation, BackendError> {
        self.calls.lock().push(format!("create {}", spec.slot_id));
        Self::check_images(&spec.containers)?;
        let n = self.slots.lock().len();
        let obs = SlotObservation {
            slot_id: spec.slot_id.clone(),
            pool: spec.pool.clone(),
            ip: Some(format!("10.99.{}.{}", n / 250, n % 250 + 2)),
            containers: self.containers(&spec.containers),
        };
        self.slots.lock().insert(spec.slot_id.clone(), obs.clone());
        Ok(obs)
    }
    async fn switch(
        &self,
        slot_id: &str,
        containers: &[ContainerSpec],
        _: &[RegistryCredential],
    ) -> Result<SlotObservation, BackendError> {
        self.calls.lock().push(format!("switch {slot_id} {}", containers[0].image));
        Self::check_images(containers)?;
        let new = self.containers(containers);
        let mut slots = self.slots.lock();
        let s = slots.get_mut(slot_id).ok_or_else(|| BackendError::SlotNotFound(slot_id.into()))?;
        s.containers = new;
        Ok(s.clone())
    }
    async fn exec(&self, slot_id: &str, req: &ExecRequest) -> Result<ExecOutput, BackendError> {
        let slots = self.slots.lock();
        let s = slots.get(slot_id).ok_or_else(|| BackendError::SlotNotFound(slot_id.into()))?;
        if !s.containers[0].state.is_running() {
            return Err(BackendError::NotRunning { slot: slot_id.into(), container: s.containers[0].name.clone() });
        }
        if req.argv.len() == 2 && req.argv[0] == "exit" {
            return Ok(ExecOutput {
                exit_code: req.argv[1].parse().unwrap_or(1),
                stdout: vec![],
                stderr: vec![],
                timed_out: false,
                truncated: false,
            });
        }
        Ok(ExecOutput {
            exit_code: 0,
            stdout: format!("{}\n", req.argv.join(" ")).into_bytes(),
            stderr: vec![],
            timed_out: false,
            truncated: false,
        })
    }
    async fn inspect(&self, slot_id: &str) -> Result<SlotObservation, BackendError> {
        self.slots.lock().get(slot_id).cloned().ok_or_else(|| BackendError::SlotNotFound(slot_id.into()))
    }
    async fn list_slots(&self) -> Result<Vec<SlotObservation>, BackendError> {
        Ok(self.slots.lock().values().cloned().collect())
    }
    async fn destroy_slot(&self, slot_id: &str) -> Result<(), BackendError> {
        self.calls.lock().push(format!("destroy {slot_id}"));
        self.slots.lock().remove(slot_id);
        Ok(())
    }
    async fn logs(&self, slot_id: &str, _: Option<&str>, _: usize) -> Result<Vec<LogLine>, BackendError> {
        self.inspect(slot_id).await.map(|_| vec![])
    }
}
