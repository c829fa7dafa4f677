use std::time::Duration;

use pitwall_bus::memory::InProcessBus;
use pitwall_proto::encode_envelope;
use pitwall_proto::v1::Envelope;

use super::*;

#[derive(Default)]
struct FakeOverlay {
    log: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl Overlay for FakeOverlay {
    async fn register(&self, id: &str, svc: &str, target: SocketAddr) -> Result<(), String> {
        self.log
            .lock()
            .unwrap()
            .push(format!("+{id}/{svc}@{target}"));
        Ok(())
    }
    async fn unregister(&self, id: &str, svc: &str) -> Result<(), String> {
        self.log.lock().unwrap().push(format!("-{id}/{svc}"));
        Ok(())
    }
}

impl FakeOverlay {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.log.lock().unwrap())
    }
}

fn status(state: VmState, address: &str, ports: &[&str]) -> VmStatus {
    let mut s = VmStatus {
        vm_id: "0193f1d2-0000-7000-8000-000000000001".into(),
        name: "web".into(),
        host: "h1".into(),
        generation: 1,
        owner: "alice".into(),
        address: address.into(),
        exposed_ports: ports.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    s.set_core_state(state);
    s
}

#[tokio::test]
async fn a_running_vm_gets_ssh_and_its_tcp_ports_and_loses_them_when_stopped() {
    let overlay = Arc::new(FakeOverlay::default());
    let t = Terminator::new(overlay.clone());
    let running = status(VmState::Running, "172.30.0.7", &["8080/tcp", "53/udp"]);
    t.apply(&running).await;
    assert_eq!(
        overlay.take(),
        [
            "+alice-web/ssh@172.30.0.7:22",
            "+alice-web/tcp-8080@172.30.0.7:8080"
        ]
    );
    // The same status again (a daemon restart re-publishes it) changes nothing.
    t.apply(&running).await;
    assert!(overlay.take().is_empty());
    t.apply(&status(VmState::Stopped, "172.30.0.7", &["8080/tcp"]))
        .await;
    assert_eq!(overlay.take(), ["-alice-web/ssh", "-alice-web/tcp-8080"]);
    assert!(t.registrations().await.is_empty());
}

#[tokio::test]
async fn a_vm_without_an_address_registers_nothing() {
    let overlay = Arc::new(FakeOverlay::default());
    let t = Terminator::new(overlay.clone());
    t.apply(&status(VmState::Running, "", &["80/tcp"])).await;
    assert!(overlay.take().is_empty());
}

#[tokio::test]
async fn statuses_on_the_hosts_queues_drive_the_registrations() {
    let bus = InProcessBus::default();
    let overlay = Arc::new(FakeOverlay::default());
    let t = Arc::new(Terminator::new(overlay.clone()));
    let _task = run("h1", Arc::new(bus.clone()), t.clone()).await.unwrap();
    let publish = |s: VmStatus| {
        let bus = bus.clone();
        async move {
            let key = routing::status_key(s.core_state().unwrap(), &s.host).unwrap();
            let env = Envelope::new("host/h1", None, Payload::VmStatus(s));
            bus.publish(&key, encode_envelope(&env)).await.unwrap();
        }
    };
    async fn eventually(t: &Terminator, want: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while t.registrations().await.len() != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never reached {want}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    publish(status(VmState::Running, "172.30.0.9", &[])).await;
    eventually(&t, 1).await;
    // Another host's VM is not this terminator's business.
    let mut other = status(VmState::Running, "172.30.0.10", &[]);
    other.host = "h2".into();
    other.vm_id = "0193f1d2-0000-7000-8000-000000000002".into();
    publish(other).await;
    publish(status(VmState::Stopped, "172.30.0.9", &[])).await;
    eventually(&t, 0).await;
    assert_eq!(
        overlay.take(),
        ["+alice-web/ssh@172.30.0.9:22", "-alice-web/ssh"]
    );
}
