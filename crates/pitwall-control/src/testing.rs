//! What the unit tests of this crate share: a [`Harness`] running a [`Control`] on the
//! in-memory store and bus, a [`FakeHost`] that heartbeats, takes its commands from its queue
//! and answers them as a real host would, and helpers that call the API in-process.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use pitwall_api::ErrorDetail;
use pitwall_bus::{Bus, Consumer, InProcessBus};
use pitwall_core::VmState;
use pitwall_proto::routing;
use pitwall_proto::v1::{envelope::Payload, Envelope, HostHeartbeat, VmCommand, VmStatus};
use pitwall_proto::{decode_envelope, encode_envelope};
use pitwall_store::sqlite::SqliteStore;
use pitwall_store::{ImageRecord, Store};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::{Control, ControlConfig};

/// The fake host's name.
pub(crate) const HOST: &str = "h1";
/// An image the harness registers on [`HOST`] before each test.
pub(crate) const IMAGE: &str = "demo/hello:1.0";
/// How long a test waits for what should happen promptly before it fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(5);

/// A control plane with one live fake host and one known image.
pub(crate) struct Harness {
    pub control: Control,
    pub bus: InProcessBus,
    pub host: FakeHost,
    /// The built-in issuer the control plane trusts.
    pub issuer: Arc<crate::auth::issuer::BuiltinIssuer>,
    /// A token of the bootstrapped `admin`: what [`Harness::call`] and its helpers send.
    pub admin_token: String,
    /// Every state-changing call made through [`Harness::call`] / [`Harness::call_as`]:
    /// method, path, status (see [`Harness::assert_every_mutation_audited`]).
    mutations: std::sync::Mutex<Vec<(String, String, u16)>>,
    dir: TempDir,
}

impl Harness {
    pub async fn start() -> Self {
        Self::with_config(|_| {}).await
    }

    /// Start with the test defaults (no background reconciliation, short reply timeout),
    /// changed by `configure`.
    pub async fn with_config(configure: impl FnOnce(&mut ControlConfig)) -> Self {
        let dir = TempDir::new();
        let mut cfg = ControlConfig::new("r1", dir.path());
        // Tests drive the reconciler with `reconcile_once`.
        cfg.reconcile_interval = Duration::from_secs(3600);
        cfg.reply_timeout = Duration::from_millis(300);
        // An import nobody answers fails the test instead of hanging it.
        cfg.import_timeout = PATIENCE;
        configure(&mut cfg);
        let store = Arc::new(SqliteStore::in_memory().await.expect("in-memory store"));
        let bus = InProcessBus::new();
        // The host's queue exists before the control plane sends anything.
        let host = FakeHost::attach(HOST, bus.clone()).await;
        store
            .put_image(&image_record(IMAGE, HOST))
            .await
            .expect("put image");
        let (issuer, boot) = crate::auth::issuer::BuiltinIssuer::open(
            &dir.path().join("issuer"),
            store.clone(),
            "https://pitwall.test".into(),
            "pitwall".into(),
            crate::auth::issuer::ADMIN_ROLE,
        )
        .await
        .expect("built-in issuer opens");
        let boot = boot.expect("admin bootstrapped");
        let admin_token = issuer
            .login(&boot.username, &boot.password)
            .await
            .expect("admin logs in")
            .access_token;
        let issuer = Arc::new(issuer);
        let ssh_ca = crate::auth::ssh_ca::SshCa::open(&dir.path().join("ca")).expect("SSH CA");
        let auth = crate::auth::Auth::builtin(
            issuer.clone(),
            crate::auth::issuer::ADMIN_ROLE,
            pitwall_core::Policy::unlimited(),
        )
        .with_ssh_ca(Arc::new(ssh_ca));
        let control = Control::start(cfg, store.clone(), Arc::new(bus.clone()), auth)
            .await
            .expect("control plane starts");
        host.heartbeat(Vec::new()).await;
        let h = Self {
            control,
            bus,
            host,
            issuer,
            admin_token,
            mutations: std::sync::Mutex::new(Vec::new()),
            dir,
        };
        let hosts = &h.control.inner.hosts;
        eventually(
            "the fake host is live",
            || async move { hosts.is_live(HOST) },
        )
        .await;
        h
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Make the fake host's last heartbeat older than its lease.
    pub fn silence_host(&self) {
        self.control.inner.hosts.expire(HOST);
    }

    /// Call as the admin.
    pub async fn call(&self, method: Method, uri: &str, body: Body) -> Reply {
        self.call_as(Some(&self.admin_token.clone()), method, uri, body)
            .await
    }

    /// Call with `token` (`None`: no Authorization header).
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: Method,
        uri: &str,
        body: Body,
    ) -> Reply {
        let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
        let m = method.to_string();
        let reply = call(&self.control, token, method, uri, body).await;
        if mutating {
            let path = uri.split('?').next().unwrap_or(uri).to_string();
            self.mutations
                .lock()
                .expect("mutations lock")
                .push((m, path, reply.status.as_u16()));
        }
        reply
    }

    /// Every state-changing call this harness made has its audit row (method, path, status).
    pub async fn assert_every_mutation_audited(&self) {
        let rows = self
            .control
            .inner
            .store
            .audit_since(0, 100_000, None)
            .await
            .expect("audit log");
        let audited: Vec<(String, String, u16)> = rows
            .iter()
            .map(|r| (r.method.clone(), r.path.clone(), r.status))
            .collect();
        let made = self.mutations.lock().expect("mutations lock").clone();
        assert!(!made.is_empty(), "no state-changing call was made");
        let mut remaining = audited.clone();
        for call in &made {
            let Some(i) = remaining.iter().position(|r| r == call) else {
                panic!("no audit row for {call:?}; rows: {audited:?}");
            };
            remaining.swap_remove(i);
        }
    }

    /// Create a local user with these groups and return a token of theirs.
    pub async fn user(&self, name: &str, groups: &[&str]) -> String {
        let password = format!("{name}-password-long-enough");
        self.issuer
            .create_user(
                name,
                &password,
                vec![],
                groups.iter().map(|g| g.to_string()).collect(),
            )
            .await
            .expect("user created");
        self.issuer
            .login(name, &password)
            .await
            .expect("user logs in")
            .access_token
    }

    /// Start a call (as the admin) in another task (for calls that wait on the fake host).
    pub fn spawn_call(&self, method: Method, uri: &str, body: Body) -> JoinHandle<Reply> {
        let control = self.control.clone();
        let uri = uri.to_owned();
        let token = self.admin_token.clone();
        tokio::spawn(async move { call(&control, Some(&token), method, &uri, body).await })
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, Body::empty()).await
    }

    pub async fn post(&self, uri: &str) -> Reply {
        self.call(Method::POST, uri, Body::empty()).await
    }

    pub async fn delete(&self, uri: &str) -> Reply {
        self.call(Method::DELETE, uri, Body::empty()).await
    }

    pub async fn post_json(&self, uri: &str, json: serde_json::Value) -> Reply {
        self.call(Method::POST, uri, Body::from(json.to_string()))
            .await
    }

    /// `POST /v1/vms` of `name` on [`IMAGE`] with default sizes; asserts 201 and takes the
    /// create command from the host's queue.
    pub async fn create_vm(&mut self, name: &str) -> pitwall_api::Vm {
        let r = self
            .post_json(
                "/v1/vms",
                serde_json::json!({ "name": name, "image": IMAGE }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let (verb, _) = self.host.next_vm_command().await;
        assert_eq!(verb, "create");
        r.json()
    }

    /// Create `name` and have the host report it CREATING, STARTING, RUNNING.
    pub async fn run_vm(&mut self, name: &str) -> pitwall_api::Vm {
        let vm = self.create_vm(name).await;
        for state in [VmState::Creating, VmState::Starting, VmState::Running] {
            self.host.report(&vm, state, 1, None).await;
        }
        self.settle().await;
        let vm = self.vm(name).await;
        assert_eq!(vm.state, "RUNNING");
        vm
    }

    /// `GET /v1/vms/{name}`, which must succeed.
    pub async fn vm(&self, name: &str) -> pitwall_api::Vm {
        let r = self.get(&format!("/v1/vms/{name}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()
    }

    /// `GET /v1/vms`.
    pub async fn vms(&self) -> Vec<pitwall_api::Vm> {
        let r = self.get("/v1/vms").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json::<pitwall_api::VmList>().vms
    }

    /// Wait until the control plane has handled every status, heartbeat and reply published
    /// so far (each is acked once handled).
    pub async fn settle(&self) {
        let queues = [
            routing::WEB_STATUS_QUEUE.to_owned(),
            routing::CONTROL_HOSTS_QUEUE.to_owned(),
            routing::reply_key("r1").expect("replica name"),
        ];
        let (bus, queues) = (&self.bus, &queues);
        eventually("the control plane handled every message", || async move {
            for q in queues {
                let ready = bus.queue_depth(q).await.expect("queue");
                let in_flight = bus.unacked_count(q).expect("queue");
                if ready + in_flight > 0 {
                    return false;
                }
            }
            true
        })
        .await;
    }
}

/// Call the API of `control` in-process, with `token` as the bearer token.
pub(crate) async fn call(
    control: &Control,
    token: Option<&str>,
    method: Method,
    uri: &str,
    body: Body,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(body).expect("request");
    let resp = control.router().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        content_type,
        body,
    }
}

/// A response, read to the end.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Bytes,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not the expected JSON ({e}): {}", self.text()))
    }

    /// The `{ "error": … }` body.
    pub fn error(&self) -> ErrorDetail {
        self.json::<pitwall_api::ErrorBody>().error
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A host as the control plane sees it: heartbeats and statuses published on the bus, and a
/// command queue this test reads.
pub(crate) struct FakeHost {
    pub name: String,
    bus: InProcessBus,
    queue: String,
    commands: Box<dyn Consumer>,
}

impl FakeHost {
    pub async fn attach(name: &str, bus: InProcessBus) -> Self {
        let q = routing::host_command_queue(name).expect("host name");
        bus.declare_queue(&q.name, &q.bindings)
            .await
            .expect("declare");
        let commands = bus.consume(&q.name, 0).await.expect("consume");
        Self {
            name: name.to_owned(),
            bus,
            queue: q.name,
            commands,
        }
    }

    fn sender(&self) -> String {
        format!("host/{}", self.name)
    }

    pub async fn heartbeat(&self, vms: Vec<VmStatus>) {
        let hb = HostHeartbeat {
            host: self.name.clone(),
            vcpus_total: 8,
            memory_mib_total: 16_384,
            disk_mib_free: 100_000,
            vm_count: u32::try_from(vms.len()).expect("few VMs"),
            vmm_kinds: vec!["qemu".into()],
            vms,
            lease_ms: 10_000,
        };
        let env = Envelope::new(&self.sender(), None, Payload::HostHeartbeat(hb));
        let key = routing::heartbeat_key(&self.name).expect("host name");
        self.bus
            .publish(&key, encode_envelope(&env))
            .await
            .expect("publish heartbeat");
    }

    /// The status report this host would send for `vm`.
    pub fn status(
        &self,
        vm: &pitwall_api::Vm,
        state: VmState,
        generation: u64,
        reason: Option<&str>,
    ) -> VmStatus {
        let mut s = VmStatus {
            vm_id: vm.id.clone(),
            name: vm.name.clone(),
            host: self.name.clone(),
            generation,
            reason: reason.unwrap_or_default().to_owned(),
            owner: vm.owner.clone(),
            ..Default::default()
        };
        s.set_core_state(state);
        s
    }

    /// Publish a status report, as the host's VM actor does on each state change.
    pub async fn report(
        &self,
        vm: &pitwall_api::Vm,
        state: VmState,
        generation: u64,
        reason: Option<&str>,
    ) {
        self.publish_status(self.status(vm, state, generation, reason))
            .await;
    }

    pub async fn publish_status(&self, status: VmStatus) {
        self.outbox().publish_status(status).await;
    }

    /// A handle that publishes this host's statuses from another task.
    pub fn outbox(&self) -> Outbox {
        Outbox {
            name: self.name.clone(),
            bus: self.bus.clone(),
        }
    }

    /// The next command sent to this host (acked), with its routing key.
    pub async fn next_command(&mut self) -> (String, Envelope) {
        let d = tokio::time::timeout(PATIENCE, self.commands.next())
            .await
            .unwrap_or_else(|_| panic!("host {} received no command", self.name))
            .expect("bus open");
        let key = d.routing_key.clone();
        let env = decode_envelope(&d.payload).expect("a valid envelope");
        d.ack().await.expect("ack");
        (key, env)
    }

    /// The next command, which must be a VM command on `orchestrator.<host>.vm.<verb>`;
    /// returns the verb.
    pub async fn next_vm_command(&mut self) -> (String, VmCommand) {
        let (key, env) = self.next_command().await;
        let Some(Payload::VmCommand(cmd)) = env.payload else {
            panic!("not a VM command on {key}: {env:?}");
        };
        let prefix = format!("orchestrator.{}.vm.", self.name);
        let verb = key
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("VM command on unexpected key {key}"));
        assert_eq!(Some(verb), cmd.verb(), "routing key and command disagree");
        (verb.to_owned(), cmd)
    }

    /// Commands sent to this host and not taken yet.
    pub async fn waiting_commands(&self) -> usize {
        self.bus.queue_depth(&self.queue).await.expect("queue")
    }

    /// Answer `request` on its `reply_to` key with its correlation id.
    pub async fn reply(&self, request: &Envelope, payload: Payload) {
        let to = request.reply_to_key().expect("a request names reply_to");
        let correlation = request
            .correlation()
            .expect("a request has a correlation id");
        let env = Envelope::new(&self.sender(), Some(correlation), payload);
        self.bus
            .publish(to, encode_envelope(&env))
            .await
            .expect("publish reply");
    }
}

/// Publishes statuses as a [`FakeHost`] (cheap to clone, movable into a task).
#[derive(Clone)]
pub(crate) struct Outbox {
    name: String,
    bus: InProcessBus,
}

impl Outbox {
    pub async fn publish_status(&self, status: VmStatus) {
        let state = status.core_state().expect("a state");
        let key = routing::status_key(state, &self.name).expect("host name");
        let env = Envelope::new(
            &format!("host/{}", self.name),
            None,
            Payload::VmStatus(status),
        );
        self.bus
            .publish(&key, encode_envelope(&env))
            .await
            .expect("publish status");
    }
}

pub(crate) fn image_record(reference: &str, host: &str) -> ImageRecord {
    ImageRecord {
        reference: reference.to_owned(),
        digest: format!("sha256:{}", "ab".repeat(32)),
        size_bytes: 4096,
        config: serde_json::json!({ "Cmd": ["/bin/sh"] }),
        host: host.to_owned(),
        owner: "admin".to_owned(),
        created_at: OffsetDateTime::now_utc(),
        details: serde_json::Value::Null,
    }
}

/// Wait until `condition` holds, failing the test after [`PATIENCE`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A directory removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("pitwall-control-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
