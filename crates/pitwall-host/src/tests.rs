//! The host as the control plane sees it: commands published on an in-process bus, a fake
//! VMM, a real image cache and real disks in a temporary data directory; statuses, replies
//! and heartbeats read back from the bus.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pitwall_bus::{Bus, Consumer, InProcessBus};
use pitwall_core::{DesiredState, ImageRef, VmState};
use pitwall_image::{ImageCache, ImageConfig};
use pitwall_proto::v1::{
    envelope::Payload, image_command, vm_command, ConsoleOutput, CreateVm, DeleteVm, Envelope,
    GuestAnswer, HostHeartbeat, ImageCommand, ImageErrorKind, ImageStatus, ImportImage, PullImage,
    ReadConsole, StartVm, StopVm, VmCommand, VmSpec, VmStatus,
};
use pitwall_proto::{decode_envelope, encode_envelope, routing};
use uuid::Uuid;

use crate::record::{Spec, VmRecord, Wish};
use crate::testing::{FakeVm, FakeVmm};
use crate::{Host, HostConfig};

/// The longest any wait in these tests may take before the test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

const HOST: &str = "h1";
const IMAGE: &str = "tiny:1";
const STATUS_QUEUE: &str = "test.statuses";
const SENDER: &str = "control/test";

/// A host on a fake VMM, and the control plane's side of the bus.
struct Harness {
    dir: tempfile::TempDir,
    bus: InProcessBus,
    vmm: FakeVmm,
    net: Arc<pitwall_net::FakeNetwork>,
    host: Host,
    statuses: Box<dyn Consumer>,
}

/// Packs a one-file tree as an OCI layout whose image runs `/bin/true`.
fn tiny_layout(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/hello"), b"hello\n").unwrap();
    let layout = dir.join("layout");
    let config = ImageConfig {
        cmd: vec!["/bin/true".into()],
        ..Default::default()
    };
    pitwall_image::build::layout_from_rootfs_dir(&rootfs, &layout, &config, "latest").unwrap();
    layout
}

/// A data directory whose image cache holds [`IMAGE`].
fn data_dir_with_image() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let layout = tiny_layout(&dir.path().join("src"));
    let cache = ImageCache::open(&dir.path().join("images")).unwrap();
    cache
        .import(&layout, &ImageRef::parse(IMAGE).unwrap())
        .unwrap();
    dir
}

fn spec(name: &str, image: &str) -> VmSpec {
    VmSpec {
        name: name.into(),
        image: image.into(),
        vcpus: 2,
        memory_mib: 192,
        disk_mib: 8,
        owner: "alice".into(),
        run: None,
        ssh_ca_public_key:
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxs8bLMq4GUuqzeL2ecgH2K5GXuKdZx9mIUN6DPRafp ca"
                .into(),
        ssh_authorized_keys: vec![],
    }
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_on(data_dir_with_image(), FakeVmm::new()).await
    }

    /// A host on `dir` (as a restarted daemon finds it) and `vmm`.
    async fn start_on(dir: tempfile::TempDir, vmm: FakeVmm) -> Harness {
        let bus = InProcessBus::default();
        bus.declare_queue(STATUS_QUEUE, &[routing::WEB_STATUS_BINDING.into()])
            .await
            .unwrap();
        let statuses = bus.consume(STATUS_QUEUE, 0).await.unwrap();
        let mut cfg = HostConfig::new(HOST, dir.path(), dir.path().join("cache"), "/nonexistent");
        cfg.heartbeat_interval = Duration::from_millis(50);
        let net = Arc::new(pitwall_net::FakeNetwork::default());
        let host = Host::start_with(
            cfg,
            Arc::new(bus.clone()),
            Arc::new(vmm.clone()),
            Some(net.clone()),
            PathBuf::from("/boot/vmlinuz"),
            PathBuf::from("/boot/initrd"),
        )
        .await
        .unwrap();
        Harness {
            dir,
            bus,
            vmm,
            net,
            host,
            statuses,
        }
    }

    fn vm_dir(&self, id: Uuid) -> PathBuf {
        VmRecord::dir(&self.dir.path().join("vms"), id)
    }

    fn record(&self, id: Uuid) -> VmRecord {
        VmRecord::load(&self.vm_dir(id)).unwrap().expect("vm.json")
    }

    async fn publish(&self, key: &str, env: Envelope) {
        self.bus.publish(key, encode_envelope(&env)).await.unwrap();
    }

    async fn send(&self, id: Uuid, generation: u64, command: vm_command::Command) {
        let cmd = VmCommand {
            vm_id: id.to_string(),
            generation,
            command: Some(command),
        };
        let key = routing::command_key(HOST, cmd.verb().unwrap()).unwrap();
        self.publish(&key, Envelope::new(SENDER, None, Payload::VmCommand(cmd)))
            .await;
    }

    async fn create_with(&self, id: Uuid, generation: u64, start: bool, spec: VmSpec) {
        let c = vm_command::Command::Create(CreateVm {
            spec: Some(spec),
            start,
        });
        self.send(id, generation, c).await;
    }

    async fn create(&self, id: Uuid, generation: u64, start: bool) {
        self.create_with(id, generation, start, spec("web", IMAGE))
            .await;
    }

    async fn start_vm(&self, id: Uuid, generation: u64) {
        let c = vm_command::Command::Start(StartVm {
            spec: Some(spec("web", IMAGE)),
        });
        self.send(id, generation, c).await;
    }

    async fn stop(&self, id: Uuid, generation: u64, timeout_ms: u32) {
        let c = vm_command::Command::Stop(StopVm { timeout_ms });
        self.send(id, generation, c).await;
    }

    async fn delete(&self, id: Uuid, generation: u64) {
        let c = vm_command::Command::Delete(DeleteVm { timeout_ms: 5000 });
        self.send(id, generation, c).await;
    }

    async fn next_status(&mut self) -> VmStatus {
        let d = tokio::time::timeout(PATIENCE, self.statuses.next())
            .await
            .expect("a VM status within the patience")
            .expect("the bus is open");
        let env = decode_envelope(&d.payload).unwrap();
        d.ack().await.unwrap();
        match env.payload {
            Some(Payload::VmStatus(s)) => s,
            other => panic!("not a VM status: {other:?}"),
        }
    }

    /// The next statuses are those of `id` in `states`, in order; returns them.
    async fn expect_states(&mut self, id: Uuid, states: &[VmState]) -> Vec<VmStatus> {
        let mut seen = Vec::new();
        for want in states {
            let s = self.next_status().await;
            assert_eq!(s.vm_id, id.to_string(), "status of another VM: {s:?}");
            assert_eq!(
                s.core_state().unwrap(),
                *want,
                "after {:?}: {s:?}",
                seen.iter()
                    .map(|s: &VmStatus| s.core_state().unwrap())
                    .collect::<Vec<_>>()
            );
            seen.push(s);
        }
        seen
    }

    /// Waits until the host has handled every command sent before, and returns the statuses
    /// published meanwhile (a delete of a VM it does not hold is answered DELETING, DELETED
    /// from the command consumer itself, which takes commands in order).
    async fn barrier(&mut self) -> Vec<VmStatus> {
        let marker = Uuid::new_v4();
        self.delete(marker, 1).await;
        let mut before = Vec::new();
        loop {
            let s = self.next_status().await;
            if s.vm_id != marker.to_string() {
                before.push(s);
            } else if s.core_state().unwrap() == VmState::Deleted {
                return before;
            }
        }
    }

    /// Creates a VM at generation 1, boots it and waits for RUNNING; returns its guest.
    async fn running_vm(&mut self, id: Uuid) -> FakeVm {
        let n = self.vmm.launches().len() + 1;
        self.create(id, 1, true).await;
        self.expect_states(id, &[VmState::Creating, VmState::Starting])
            .await;
        let vm = self.vmm.launch_number(n).await.vm;
        vm.become_ready();
        self.expect_states(id, &[VmState::Running]).await;
        vm
    }

    /// Declares a queue bound to `key` and consumes it.
    async fn listen(&self, queue: &str, key: &str) -> Box<dyn Consumer> {
        self.bus.declare_queue(queue, &[key.into()]).await.unwrap();
        self.bus.consume(queue, 0).await.unwrap()
    }
}

async fn next_payload(c: &mut Box<dyn Consumer>) -> Envelope {
    let d = tokio::time::timeout(PATIENCE, c.next())
        .await
        .expect("a message within the patience")
        .expect("the bus is open");
    let env = decode_envelope(&d.payload).unwrap();
    d.ack().await.unwrap();
    env
}

fn states_of(statuses: &[VmStatus]) -> Vec<(VmState, u64)> {
    statuses
        .iter()
        .map(|s| (s.core_state().unwrap(), s.generation))
        .collect()
}

#[tokio::test]
async fn create_with_start_reports_creating_starting_running_at_generation_1() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    h.create(id, 1, true).await;
    let mut seen = h
        .expect_states(id, &[VmState::Creating, VmState::Starting])
        .await;
    h.vmm.launch_number(1).await.vm.become_ready();
    seen.extend(h.expect_states(id, &[VmState::Running]).await);
    assert_eq!(
        states_of(&seen),
        [
            (VmState::Creating, 1),
            (VmState::Starting, 1),
            (VmState::Running, 1)
        ]
    );
    assert!(seen
        .iter()
        .all(|s| s.host == HOST && s.name == "web" && s.owner == "alice"));
}

#[tokio::test]
async fn create_boots_on_read_only_base_writable_data_and_read_only_config_disks() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    h.create(id, 1, true).await;
    let cfg = h.vmm.launch_number(1).await.cfg;
    let dir = h.vm_dir(id);
    let disks: Vec<_> = cfg
        .disks
        .iter()
        .map(|d| (d.path.clone(), d.read_only))
        .collect();
    assert_eq!(disks.len(), 3, "{disks:?}");
    assert!(
        disks[0].0.ends_with("rootfs.erofs") && disks[0].1,
        "{disks:?}"
    );
    assert_eq!(disks[1], (dir.join("data.ext4"), false));
    assert_eq!(disks[2], (dir.join("config.img"), true));
    assert!(disks.iter().all(|(p, _)| p.is_file()), "{disks:?}");
    assert_eq!((cfg.vcpus, cfg.memory_mib), (2, 192));
    assert_eq!(cfg.run_dir, dir.join("run"));
    assert_eq!(cfg.kernel, PathBuf::from("/boot/vmlinuz"));
    h.expect_states(id, &[VmState::Creating, VmState::Starting])
        .await;
}

#[tokio::test]
async fn a_vm_gets_a_nic_and_an_address_on_start_and_loses_them_on_delete() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    h.create(id, 1, true).await;
    let launch = h.vmm.launch_number(1).await;
    launch.vm.become_ready();
    let seen = h
        .expect_states(
            id,
            &[VmState::Creating, VmState::Starting, VmState::Running],
        )
        .await;
    let attached = h.net.attached();
    assert_eq!(attached.len(), 1, "{attached:?}");
    let nic = &attached[0];
    assert_eq!(nic.vm_id, id);
    // The VMM gets the TAP and the MAC; the guest the same MAC with its address.
    let vmm_nic = launch.cfg.nic.as_ref().expect("the VMM gets a NIC");
    assert_eq!(
        (vmm_nic.tap.as_str(), vmm_nic.mac.as_str(), &vmm_nic.netns),
        (nic.tap.as_str(), nic.mac.to_string().as_str(), &None)
    );
    let guest = pitwall_vmm::disk::read_config_disk(&launch.cfg.disks[2].path).unwrap();
    let net = guest.network.expect("the guest's network config");
    assert_eq!(net.mac, nic.mac.to_string());
    assert_eq!(net.address, format!("{}/{}", nic.ip, nic.prefix_len));
    assert_eq!(net.gateway, nic.gateway.to_string());
    assert_eq!(
        net.dns,
        nic.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()
    );
    // SSH is always on, trusting the deployment's CA the spec carries.
    let ssh = guest.ssh.expect("the guest's SSH config");
    assert_eq!(ssh.port, 22);
    assert_eq!(ssh.user_ca_keys, [spec("x", IMAGE).ssh_ca_public_key]);
    let running = seen.last().unwrap();
    assert_eq!(
        running.address,
        nic.ip.to_string(),
        "RUNNING carries the address"
    );
    assert_eq!(
        running.ssh_host_key,
        format!("ssh-ed25519 FAKE-{}", launch.cfg.name),
        "RUNNING carries the guest's SSH host key"
    );
    h.delete(id, 2).await;
    let gone = h
        .expect_states(
            id,
            &[
                VmState::Stopping,
                VmState::Stopped,
                VmState::Deleting,
                VmState::Deleted,
            ],
        )
        .await;
    assert!(h.net.attached().is_empty(), "the NIC is detached on delete");
    assert_eq!(
        gone.last().unwrap().address,
        "",
        "a deleted VM has no address"
    );
}

/// Bytes a tree takes on disk (allocated blocks, not apparent sizes).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).unwrap();
    if !m.is_dir() {
        return m.blocks() * 512;
    }
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| allocated(&e.unwrap().path()))
        .sum()
}

#[tokio::test]
async fn two_vms_of_one_image_share_its_base_and_the_second_copies_nothing_of_it() {
    use std::os::unix::fs::MetadataExt;
    let mut h = Harness::start().await;
    // An image whose base is big enough that any copy of it would show.
    let src = tempfile::tempdir().unwrap();
    let rootfs = src.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let noise: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(rootfs.join("bin/blob"), noise).unwrap();
    let layout = src.path().join("layout");
    let config = ImageConfig {
        cmd: vec!["/bin/blob".into()],
        ..Default::default()
    };
    pitwall_image::build::layout_from_rootfs_dir(&rootfs, &layout, &config, "latest").unwrap();
    let cache = ImageCache::open(&h.dir.path().join("images")).unwrap();
    let info = cache
        .import(&layout, &ImageRef::parse("big:1").unwrap())
        .unwrap();
    let base = std::fs::metadata(&info.rootfs).unwrap();
    assert!(
        base.blocks() * 512 >= 8 << 20,
        "the base holds the 8 MiB file"
    );
    let images_before = allocated(&h.dir.path().join("images"));

    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for (n, id) in [a, b].into_iter().enumerate() {
        h.create_with(id, 1, true, spec(&format!("vm-{n}"), "big:1"))
            .await;
        h.expect_states(id, &[VmState::Creating, VmState::Starting])
            .await;
    }
    let first = h.vmm.launch_number(1).await.cfg;
    let second = h.vmm.launch_number(2).await.cfg;
    for cfg in [&first, &second] {
        let d = &cfg.disks[0];
        assert!(d.read_only, "the base is attached read-only");
        let m = std::fs::metadata(&d.path).unwrap();
        assert_eq!(
            (m.dev(), m.ino()),
            (base.dev(), base.ino()),
            "both VMs boot the cache's one base file, not a copy"
        );
    }
    let after = std::fs::metadata(&info.rootfs).unwrap();
    assert_eq!(
        after.mtime_nsec(),
        base.mtime_nsec(),
        "the base was not written"
    );
    assert_eq!(
        allocated(&h.dir.path().join("images")),
        images_before,
        "the image cache did not grow"
    );
    // What the second VM has of its own: a sparse data disk and a config disk, far less than
    // the base it boots.
    let own = allocated(&h.vm_dir(b));
    assert!(
        own < 4 << 20,
        "the second VM's own files take {own} bytes; the base takes {}",
        base.blocks() * 512
    );
}

#[tokio::test]
async fn run_overrides_reach_the_guests_config_disk() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    let mut s = spec("web", IMAGE);
    s.run = Some(pitwall_proto::v1::RunOverrides::from(
        &pitwall_core::RunOverrides {
            entrypoint: Some(vec!["/bin/sh".into()]),
            cmd: Some(vec!["-c".into(), "echo hi".into()]),
            env: vec!["A=1".into()],
            working_dir: Some("/srv".into()),
            user: Some("1000".into()),
            services: vec![
                pitwall_core::ServiceSpec {
                    name: "app".into(),
                    restart: pitwall_core::RestartPolicy::Always,
                    ..Default::default()
                },
                pitwall_core::ServiceSpec {
                    name: "cron".into(),
                    command: vec!["/bin/cron".into()],
                    env: vec!["B=2".into()],
                    user: Some("0".into()),
                    restart: pitwall_core::RestartPolicy::OnFailure,
                    ..Default::default()
                },
            ],
        },
    ));
    h.create_with(id, 1, true, s).await;
    let cfg = h.vmm.launch_number(1).await.cfg;
    let guest = pitwall_vmm::disk::read_config_disk(&cfg.disks[2].path).unwrap();
    assert_eq!(guest.argv, ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(guest.env, ["A=1"]);
    assert_eq!(
        (guest.working_dir.as_str(), guest.user.as_str()),
        ("/srv", "1000")
    );
    // Declared services: one without a command runs the VM's program with its settings.
    use pitwall_proto::v1::{RestartPolicy, Service};
    assert_eq!(
        guest.services,
        [
            Service {
                name: "app".into(),
                argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
                env: vec![],
                working_dir: "/srv".into(),
                user: "1000".into(),
                restart: RestartPolicy::Always.into(),
            },
            Service {
                name: "cron".into(),
                argv: vec!["/bin/cron".into()],
                env: vec!["B=2".into()],
                working_dir: "/srv".into(),
                user: "0".into(),
                restart: RestartPolicy::OnFailure.into(),
            },
        ]
    );
    // Without overrides the image's own configuration stands.
    let other = Uuid::new_v4();
    h.create_with(other, 1, true, spec("plain", IMAGE)).await;
    let cfg = h.vmm.launch_number(2).await.cfg;
    let guest = pitwall_vmm::disk::read_config_disk(&cfg.disks[2].path).unwrap();
    assert_eq!(guest.argv, ["/bin/true"]);
    let main: Vec<_> = guest
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.argv.clone(), s.restart))
        .collect();
    assert_eq!(
        main,
        [("main", vec!["/bin/true".to_string()], 0)],
        "one never-restarted main"
    );
    h.expect_states(id, &[VmState::Creating, VmState::Starting])
        .await;
}

#[tokio::test]
async fn create_persists_the_wish_in_vm_json() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    h.running_vm(id).await;
    let rec = h.record(id);
    assert_eq!(rec.id, id);
    assert_eq!(
        rec.wish,
        Wish {
            desired: DesiredState::Running,
            generation: 1,
            spec: Spec::from(&spec("web", IMAGE)),
            grace_ms: 0,
        }
    );
    assert_eq!(rec.state, VmState::Running);
}

#[tokio::test]
async fn create_without_start_builds_the_disks_and_leaves_the_vm_stopped() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    h.create(id, 1, false).await;
    let seen = h
        .expect_states(id, &[VmState::Creating, VmState::Stopped])
        .await;
    assert_eq!(states_of(&seen)[1], (VmState::Stopped, 1));
    assert!(h.barrier().await.is_empty());
    assert!(h.vmm.launches().is_empty());
    assert!(h.vm_dir(id).join("data.ext4").is_file());
    assert_eq!(h.record(id).wish.desired, DesiredState::Stopped);
}

#[tokio::test]
async fn boot_failure_reports_failed_with_the_reason_and_kills_the_vmm() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    h.create(id, 1, true).await;
    h.expect_states(id, &[VmState::Creating, VmState::Starting])
        .await;
    let vm = h.vmm.launch_number(1).await.vm;
    vm.fail_boot("no /bin/true in the image");
    let failed = h.expect_states(id, &[VmState::Failed]).await.remove(0);
    assert!(
        failed.reason.contains("no /bin/true in the image"),
        "{}",
        failed.reason
    );
    assert_eq!(failed.generation, 1);
    assert_eq!(vm.kills(), 1);
    assert!(!vm.is_alive());
}

#[tokio::test]
async fn failed_boot_is_not_retried_at_the_same_generation() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    h.create(id, 1, true).await;
    h.vmm.launch_number(1).await.vm.fail_boot("kernel panic");
    h.expect_states(id, &[VmState::Creating, VmState::Starting, VmState::Failed])
        .await;
    // The control plane's reconciler sends the same command again.
    h.create(id, 1, true).await;
    assert!(h.barrier().await.is_empty());
    assert_eq!(h.vmm.launches().len(), 1);
    assert_eq!(h.record(id).state, VmState::Failed);
}

#[tokio::test]
async fn start_at_a_new_generation_after_a_failed_boot_launches_again() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    h.create(id, 1, true).await;
    h.vmm.launch_number(1).await.vm.fail_boot("kernel panic");
    h.expect_states(id, &[VmState::Creating, VmState::Starting, VmState::Failed])
        .await;
    h.start_vm(id, 2).await;
    let starting = h.expect_states(id, &[VmState::Starting]).await;
    assert_eq!(starting[0].generation, 2);
    h.vmm.launch_number(2).await.vm.become_ready();
    let running = h.expect_states(id, &[VmState::Running]).await;
    assert_eq!((running[0].generation, running[0].reason.as_str()), (2, ""));
}

#[tokio::test]
async fn unknown_image_fails_naming_the_image_and_how_to_import_it() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    h.create_with(id, 1, true, spec("web", "missing:2")).await;
    let failed = h
        .expect_states(id, &[VmState::Creating, VmState::Failed])
        .await
        .remove(1);
    assert!(failed.reason.contains("missing:2"), "{}", failed.reason);
    assert!(
        failed.reason.contains("pitwall image import"),
        "{}",
        failed.reason
    );
    assert!(h.vmm.launches().is_empty());
}

#[tokio::test]
async fn stop_shuts_the_guest_down_with_the_commands_grace() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    let vm = h.running_vm(id).await;
    h.stop(id, 2, 3_000).await;
    let seen = h
        .expect_states(id, &[VmState::Stopping, VmState::Stopped])
        .await;
    assert_eq!(
        states_of(&seen),
        [(VmState::Stopping, 2), (VmState::Stopped, 2)]
    );
    assert_eq!(vm.shutdowns(), [Duration::from_secs(3)]);
    assert!(!vm.is_alive());
    assert_eq!(h.record(id).state, VmState::Stopped);
}

#[tokio::test]
async fn delete_of_a_stopped_vm_removes_its_directory() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    h.create(id, 1, false).await;
    h.expect_states(id, &[VmState::Creating, VmState::Stopped])
        .await;
    assert!(h.vm_dir(id).is_dir());
    h.delete(id, 2).await;
    let seen = h
        .expect_states(id, &[VmState::Deleting, VmState::Deleted])
        .await;
    assert_eq!(
        states_of(&seen),
        [(VmState::Deleting, 2), (VmState::Deleted, 2)]
    );
    assert!(!h.vm_dir(id).exists());
}

#[tokio::test]
async fn delete_of_a_running_vm_stops_it_first() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    let vm = h.running_vm(id).await;
    h.delete(id, 2).await;
    h.expect_states(
        id,
        &[
            VmState::Stopping,
            VmState::Stopped,
            VmState::Deleting,
            VmState::Deleted,
        ],
    )
    .await;
    assert_eq!(vm.shutdowns(), [Duration::from_secs(5)]);
    assert!(!h.vm_dir(id).exists());
}

#[tokio::test]
async fn a_repeated_generation_changes_nothing() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    let vm = h.running_vm(id).await;
    h.create(id, 1, true).await;
    h.stop(id, 1, 1_000).await;
    assert!(h.barrier().await.is_empty());
    assert_eq!(h.vmm.launches().len(), 1);
    assert!(vm.is_alive() && vm.shutdowns().is_empty());
    let rec = h.record(id);
    assert_eq!(
        (rec.wish.desired, rec.wish.generation, rec.state),
        (DesiredState::Running, 1, VmState::Running)
    );
}

#[tokio::test]
async fn an_older_generation_changes_nothing() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    h.create(id, 1, false).await;
    h.expect_states(id, &[VmState::Creating, VmState::Stopped])
        .await;
    h.stop(id, 3, 1_000).await;
    // Already stopped: the host only says so at the new generation.
    let seen = h.expect_states(id, &[VmState::Stopped]).await;
    assert_eq!(seen[0].generation, 3);
    h.start_vm(id, 2).await;
    h.delete(id, 2).await;
    assert!(h.barrier().await.is_empty());
    assert!(h.vmm.launches().is_empty());
    let rec = h.record(id);
    assert_eq!(
        (rec.wish.desired, rec.wish.generation, rec.state),
        (DesiredState::Stopped, 3, VmState::Stopped)
    );
}

#[tokio::test]
async fn vmm_exiting_by_itself_reports_stopped_with_the_workload_exit_code() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    let vm = h.running_vm(id).await;
    vm.exit_by_itself(3);
    let stopped = h.expect_states(id, &[VmState::Stopped]).await.remove(0);
    assert!(
        stopped.reason.contains("exited with code 3"),
        "{}",
        stopped.reason
    );
    assert_eq!(stopped.generation, 1);
    // Ended at this wish: not started again by itself.
    assert!(h.barrier().await.is_empty());
    assert_eq!(h.vmm.launches().len(), 1);
}

#[tokio::test]
async fn stop_during_boot_shuts_the_vm_down_and_ends_stopped() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    h.create(id, 1, true).await;
    h.expect_states(id, &[VmState::Creating, VmState::Starting])
        .await;
    let vm = h.vmm.launch_number(1).await.vm;
    h.stop(id, 2, 2_000).await;
    let seen = h
        .expect_states(id, &[VmState::Stopping, VmState::Stopped])
        .await;
    assert_eq!(
        states_of(&seen),
        [(VmState::Stopping, 2), (VmState::Stopped, 2)]
    );
    assert_eq!(vm.shutdowns(), [Duration::from_secs(2)]);
    vm.become_ready();
    assert!(h.barrier().await.is_empty());
    assert_eq!(h.record(id).state, VmState::Stopped);
}

/// A data directory as a host daemon left it: one VM at generation 1, last reported `state`.
fn data_dir_with_vm(id: Uuid, state: VmState) -> tempfile::TempDir {
    let dir = data_dir_with_image();
    let rec = VmRecord {
        id,
        wish: Wish {
            desired: DesiredState::Running,
            generation: 1,
            spec: Spec::from(&spec("web", IMAGE)),
            grace_ms: 0,
        },
        state,
        reason: None,
        settled_generation: 0,
    };
    rec.save(&VmRecord::dir(&dir.path().join("vms"), id))
        .unwrap();
    dir
}

#[tokio::test]
async fn recovery_reattaches_to_a_live_vmm_and_keeps_it_running() {
    let id = Uuid::new_v4();
    let dir = data_dir_with_vm(id, VmState::Running);
    let vmm = FakeVmm::new();
    let vm = vmm.mark_live(
        &VmRecord::dir(&dir.path().join("vms"), id).join("run"),
        "web",
    );
    let mut h = Harness::start_on(dir, vmm).await;
    let running = h.expect_states(id, &[VmState::Running]).await.remove(0);
    assert_eq!((running.generation, running.reason.as_str()), (1, ""));
    assert!(h.vmm.launches().is_empty());
    // The host holds the surviving VMM: a stop reaches it.
    h.stop(id, 2, 1_000).await;
    h.expect_states(id, &[VmState::Stopping, VmState::Stopped])
        .await;
    assert_eq!(vm.shutdowns(), [Duration::from_secs(1)]);
}

#[tokio::test]
async fn recovery_without_a_live_vmm_reports_stopped_and_why() {
    let id = Uuid::new_v4();
    let mut h = Harness::start_on(data_dir_with_vm(id, VmState::Running), FakeVmm::new()).await;
    let stopped = h.expect_states(id, &[VmState::Stopped]).await.remove(0);
    assert_eq!(
        stopped.reason,
        "the VMM process was gone when the host daemon restarted"
    );
    assert!(h.barrier().await.is_empty());
    assert!(h.vmm.launches().is_empty());
}

#[tokio::test]
async fn read_console_answers_the_tail_of_the_console_log_to_the_reply_key() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    h.create(id, 1, false).await;
    h.expect_states(id, &[VmState::Creating, VmState::Stopped])
        .await;
    let run = h.vm_dir(id).join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("console.log"), b"booting\nhello\n").unwrap();
    let reply_key = routing::reply_key("r1").unwrap();
    let mut replies = h.listen("test.replies", &reply_key).await;
    let cmd = VmCommand {
        vm_id: id.to_string(),
        generation: 0,
        command: Some(vm_command::Command::ReadConsole(ReadConsole {
            max_bytes: 6,
        })),
    };
    let env =
        Envelope::new(SENDER, Some("c-42"), Payload::VmCommand(cmd)).with_reply_to(&reply_key);
    let key = routing::command_key(HOST, routing::verb::READ_CONSOLE).unwrap();
    h.publish(&key, env).await;
    let answer = next_payload(&mut replies).await;
    assert_eq!(answer.correlation_id, "c-42");
    let Some(Payload::ConsoleOutput(out)) = answer.payload else {
        panic!("not a console output: {answer:?}");
    };
    assert_eq!(
        out,
        ConsoleOutput {
            vm_id: id.to_string(),
            data: b"hello\n".to_vec(),
            truncated: true,
            error: String::new(),
        }
    );
}

#[tokio::test]
async fn read_console_of_a_vm_the_host_does_not_hold_answers_an_error() {
    let h = Harness::start().await;
    let id = Uuid::new_v4();
    let reply_key = routing::reply_key("r1").unwrap();
    let mut replies = h.listen("test.replies", &reply_key).await;
    let cmd = VmCommand {
        vm_id: id.to_string(),
        generation: 0,
        command: Some(vm_command::Command::ReadConsole(ReadConsole {
            max_bytes: 100,
        })),
    };
    let env = Envelope::new(SENDER, Some("c-7"), Payload::VmCommand(cmd)).with_reply_to(&reply_key);
    let key = routing::command_key(HOST, routing::verb::READ_CONSOLE).unwrap();
    h.publish(&key, env).await;
    let answer = next_payload(&mut replies).await;
    assert_eq!(answer.correlation_id, "c-7");
    let Some(Payload::ConsoleOutput(out)) = answer.payload else {
        panic!("not a console output: {answer:?}");
    };
    assert!(out.error.contains(&id.to_string()), "{}", out.error);
    assert!(out.data.is_empty());
}

/// Asks the host `command` about VM `id` and returns its GuestAnswer.
async fn ask_guest(h: &Harness, id: Uuid, command: vm_command::Command) -> GuestAnswer {
    let reply_key = routing::reply_key("r1").unwrap();
    let mut replies = h.listen("test.replies", &reply_key).await;
    let verb = match &command {
        vm_command::Command::Exec(_) => routing::verb::EXEC,
        _ => routing::verb::LIST_SERVICES,
    };
    let cmd = VmCommand {
        vm_id: id.to_string(),
        generation: 0,
        command: Some(command),
    };
    let env = Envelope::new(SENDER, Some("g-1"), Payload::VmCommand(cmd)).with_reply_to(&reply_key);
    h.publish(&routing::command_key(HOST, verb).unwrap(), env)
        .await;
    let answer = next_payload(&mut replies).await;
    assert_eq!(answer.correlation_id, "g-1");
    let Some(Payload::GuestAnswer(out)) = answer.payload else {
        panic!("not a guest answer: {answer:?}");
    };
    out
}

#[tokio::test]
async fn exec_and_services_are_asked_of_a_running_guest_and_refused_otherwise() {
    let mut h = Harness::start().await;
    let id = Uuid::new_v4();
    let echo = || {
        vm_command::Command::Exec(pitwall_proto::v1::Exec {
            argv: vec!["echo".into(), "hi".into()],
            ..Default::default()
        })
    };
    // Not running yet: refused, the VMM is not asked.
    h.create(id, 1, false).await;
    h.expect_states(id, &[VmState::Creating, VmState::Stopped])
        .await;
    let out = ask_guest(&h, id, echo()).await;
    assert_eq!(out.error, "the VM is not RUNNING");
    assert_eq!(out.answer, None);

    h.start_vm(id, 2).await;
    h.vmm.launch_number(1).await.vm.become_ready();
    h.expect_states(id, &[VmState::Starting, VmState::Running])
        .await;
    let out = ask_guest(&h, id, echo()).await;
    let Some(pitwall_proto::v1::guest_answer::Answer::Exec(r)) = out.answer else {
        panic!("no exec result: {out:?}");
    };
    assert_eq!((r.code, r.stdout.as_slice()), (0, &b"hi\n"[..]));
    let out = ask_guest(
        &h,
        id,
        vm_command::Command::ListServices(Default::default()),
    )
    .await;
    let Some(pitwall_proto::v1::guest_answer::Answer::Services(list)) = out.answer else {
        panic!("no service list: {out:?}");
    };
    assert_eq!(list.services[0].name, "main");

    // Stopped again: refused.
    h.stop(id, 3, 1000).await;
    h.expect_states(id, &[VmState::Stopping, VmState::Stopped])
        .await;
    assert_eq!(
        ask_guest(&h, id, echo()).await.error,
        "the VM is not RUNNING"
    );
    // Unknown VM: the host says so.
    let other = Uuid::new_v4();
    let out = ask_guest(&h, other, echo()).await;
    assert!(out.error.contains(&other.to_string()), "{}", out.error);
}

/// Sends an import of `archive` as `reference` and returns the host's answer.
async fn import(h: &Harness, reference: &str, archive: &Path, remove: bool) -> ImageStatus {
    let reply_key = routing::reply_key("r1").unwrap();
    let mut replies = h.listen("test.replies", &reply_key).await;
    let cmd = ImageCommand {
        command: Some(image_command::Command::Import(ImportImage {
            reference: reference.into(),
            archive_path: archive.display().to_string(),
            remove_archive: remove,
        })),
    };
    let env =
        Envelope::new(SENDER, Some("imp-1"), Payload::ImageCommand(cmd)).with_reply_to(&reply_key);
    let key = routing::image_command_key(HOST, routing::verb::IMPORT).unwrap();
    h.publish(&key, env).await;
    let answer = next_payload(&mut replies).await;
    assert_eq!(answer.correlation_id, "imp-1");
    match answer.payload {
        Some(Payload::ImageStatus(s)) => s,
        other => panic!("not an image status: {other:?}"),
    }
}

#[tokio::test]
async fn import_of_a_layout_tar_answers_ok_with_digest_and_config_and_removes_the_archive() {
    let h = Harness::start().await;
    let src = tempfile::tempdir().unwrap();
    let layout = tiny_layout(src.path());
    let archive = src.path().join("image.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    b.append_dir_all("", &layout).unwrap();
    b.into_inner().unwrap();
    let st = import(&h, "other:2", &archive, true).await;
    assert!(st.ok, "{}", st.error);
    assert_eq!((st.reference.as_str(), st.host.as_str()), ("other:2", HOST));
    assert!(st.digest.starts_with("sha256:"), "{}", st.digest);
    assert!(st.size_bytes > 0);
    let config: ImageConfig = serde_json::from_str(&st.config_json).unwrap();
    assert_eq!(config.cmd, ["/bin/true"]);
    let details: serde_json::Value = serde_json::from_str(&st.details_json).unwrap();
    assert_eq!(details["base_format"], "erofs");
    assert_eq!(details["os"], "linux");
    assert_eq!(details["layers"].as_array().map(Vec::len), Some(1));
    assert!(!archive.exists());
}

#[tokio::test]
async fn import_of_a_corrupt_file_answers_an_error_and_keeps_the_archive_unless_asked() {
    let h = Harness::start().await;
    let src = tempfile::tempdir().unwrap();
    let archive = src.path().join("junk.tar");
    std::fs::write(&archive, b"this is not an image archive").unwrap();
    let st = import(&h, "junk:1", &archive, false).await;
    assert!(!st.ok);
    assert!(!st.error.is_empty());
    assert_eq!(st.error_kind(), ImageErrorKind::Invalid);
    assert!(st.digest.is_empty());
    assert!(archive.exists());
}

/// Sends a removal of `reference` and returns the host's answer.
async fn remove_image(h: &Harness, reference: &str) -> ImageStatus {
    let reply_key = routing::reply_key("r1").unwrap();
    let mut replies = h.listen("test.replies", &reply_key).await;
    let cmd = ImageCommand {
        command: Some(image_command::Command::Remove(
            pitwall_proto::v1::RemoveImage {
                reference: reference.into(),
            },
        )),
    };
    let env =
        Envelope::new(SENDER, Some("rm-1"), Payload::ImageCommand(cmd)).with_reply_to(&reply_key);
    let key = routing::image_command_key(HOST, routing::verb::REMOVE).unwrap();
    h.publish(&key, env).await;
    let answer = next_payload(&mut replies).await;
    assert_eq!(answer.correlation_id, "rm-1");
    match answer.payload {
        Some(Payload::ImageStatus(s)) => s,
        other => panic!("not an image status: {other:?}"),
    }
}

#[tokio::test]
async fn remove_answers_removed_deletes_the_image_and_a_second_remove_answers_not_removed() {
    let h = Harness::start().await;
    let cache = ImageCache::open(&h.dir.path().join("images")).unwrap();
    let r = ImageRef::parse(IMAGE).unwrap();
    let rootfs = cache.get(&r).unwrap().expect("imported").rootfs;
    let st = remove_image(&h, IMAGE).await;
    assert!(st.ok, "{}", st.error);
    assert!(st.removed);
    assert_eq!(cache.get(&r).unwrap(), None);
    assert!(
        !rootfs.exists(),
        "no reference is left: the built image is collected"
    );
    let st = remove_image(&h, IMAGE).await;
    assert!(st.ok, "{}", st.error);
    assert!(!st.removed);
}

#[tokio::test]
async fn pull_from_an_unreachable_registry_answers_a_registry_error_naming_it() {
    let h = Harness::start().await;
    let reply_key = routing::reply_key("r1").unwrap();
    let mut replies = h.listen("test.replies", &reply_key).await;
    let cmd = ImageCommand {
        command: Some(image_command::Command::Pull(PullImage {
            reference: "127.0.0.1:9/nobody/nothing:1".into(),
        })),
    };
    let env =
        Envelope::new(SENDER, Some("pull-1"), Payload::ImageCommand(cmd)).with_reply_to(&reply_key);
    let key = routing::image_command_key(HOST, routing::verb::PULL).unwrap();
    h.publish(&key, env).await;
    let answer = next_payload(&mut replies).await;
    assert_eq!(answer.correlation_id, "pull-1");
    let Some(Payload::ImageStatus(st)) = answer.payload else {
        panic!("not an image status: {answer:?}");
    };
    assert!(!st.ok);
    assert_eq!(st.reference, "127.0.0.1:9/nobody/nothing:1");
    assert_eq!(st.error_kind(), ImageErrorKind::Registry, "{}", st.error);
    assert!(st.error.contains("127.0.0.1:9"), "{}", st.error);
}

#[tokio::test]
async fn heartbeat_lists_every_held_vm_with_its_state_and_generation() {
    let mut h = Harness::start().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    h.running_vm(a).await;
    h.create(b, 1, false).await;
    h.expect_states(b, &[VmState::Creating, VmState::Stopped])
        .await;
    h.stop(b, 2, 1_000).await;
    h.expect_states(b, &[VmState::Stopped]).await;
    let mut beats = h
        .listen("test.heartbeats", &routing::heartbeat_key(HOST).unwrap())
        .await;
    let want = {
        let mut w = vec![
            (a.to_string(), VmState::Running, 1),
            (b.to_string(), VmState::Stopped, 2),
        ];
        w.sort_by(|x, y| x.0.cmp(&y.0));
        w
    };
    let hb: HostHeartbeat = loop {
        let env = next_payload(&mut beats).await;
        let Some(Payload::HostHeartbeat(hb)) = env.payload else {
            panic!("not a heartbeat: {env:?}");
        };
        let mut got: Vec<_> = hb
            .vms
            .iter()
            .map(|s| (s.vm_id.clone(), s.core_state().unwrap(), s.generation))
            .collect();
        got.sort_by(|x, y| x.0.cmp(&y.0));
        if got == want {
            break hb;
        }
    };
    assert_eq!(hb.host, h.host.name());
    assert_eq!(hb.vm_count, 2);
    assert!(hb.vcpus_total > 0 && hb.memory_mib_total > 0 && hb.disk_mib_free > 0);
    assert_eq!(hb.vmm_kinds, ["fake"]);
    assert!(hb.lease_ms > 0);
}
