//! Routing keys, queue names and bindings of ARCHITECTURE §3, in one place.
//!
//! | message | routing key | queue ← binding |
//! |---|---|---|
//! | VM command, control → host | `orchestrator.<host>.vm.<verb>` | `orchestrator.commands.<host>` ← `orchestrator.<host>.#` |
//! | image command, control → host | `orchestrator.<host>.image.<verb>` | (same host queue) |
//! | VM status, host → control | `orchestrator.vm.status.<STATE>.<host>` | `orchestrator.vm.status.web` ← `orchestrator.vm.status.#` |
//! | | | `orchestrator.vm.status.terminator.running.<host>` ← `orchestrator.vm.status.RUNNING.<host>` |
//! | | | `orchestrator.vm.status.terminator.stopped.<host>` ← `orchestrator.vm.status.STOPPED.<host>` |
//! | image status, host → control | `orchestrator.image.status.<host>` | `orchestrator.control.hosts` ← `orchestrator.image.status.#` |
//! | heartbeat, host → control | `orchestrator.host.heartbeat.<host>` | `orchestrator.control.hosts` ← `orchestrator.host.heartbeat.#` |
//! | answer to one control replica | `orchestrator.reply.<replica>` | `orchestrator.reply.<replica>` ← the same key |
//!
//! Every name put into a key (host, replica, verb) is checked to be one word (see
//! [`validate_host`]): a `.` would shift the words, a `*` or `#` would be a wildcard in a
//! binding. Host names also must not be one of [`RESERVED_HOST_NAMES`]: a host called `vm`
//! would bind `orchestrator.vm.#` and swallow every VM status.

use pitwall_core::VmState;

use crate::v1;

/// First word of every key and queue.
const ROOT: &str = "orchestrator";

/// The VM status queue of the control plane (competing consumers across replicas).
pub const WEB_STATUS_QUEUE: &str = "orchestrator.vm.status.web";
/// Binding of [`WEB_STATUS_QUEUE`]: every VM status of every host.
pub const WEB_STATUS_BINDING: &str = "orchestrator.vm.status.#";

/// The control plane's queue for image statuses and host heartbeats (competing consumers
/// across replicas).
pub const CONTROL_HOSTS_QUEUE: &str = "orchestrator.control.hosts";
/// Bindings of [`CONTROL_HOSTS_QUEUE`].
pub const CONTROL_HOSTS_BINDINGS: [&str; 2] = [
    "orchestrator.image.status.#",
    "orchestrator.host.heartbeat.#",
];

/// Words that follow `orchestrator.` in non-command keys; a host of that name would bind
/// (`orchestrator.<host>.#`) messages that are not its commands. Compared case-insensitively.
pub const RESERVED_HOST_NAMES: [&str; 6] = ["vm", "image", "host", "reply", "control", "commands"];

/// Longest host, replica or verb name accepted (a DNS label's limit).
pub const MAX_WORD_LEN: usize = 63;

/// Verbs of the command keys: the name of the command's `oneof` field.
pub mod verb {
    pub const CREATE: &str = "create";
    pub const START: &str = "start";
    pub const STOP: &str = "stop";
    pub const DELETE: &str = "delete";
    pub const READ_CONSOLE: &str = "read_console";
    pub const EXEC: &str = "exec";
    pub const LIST_SERVICES: &str = "list_services";
    pub const READ_LOG: &str = "read_log";
    pub const IMPORT: &str = "import";
    pub const REMOVE: &str = "remove";
    pub const PULL: &str = "pull";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} cannot be used in a routing key: {why}")]
pub struct RoutingError {
    /// "host name", "replica name" or "verb".
    pub what: &'static str,
    pub value: String,
    pub why: &'static str,
}

/// A queue and the binding patterns it is declared with (`Bus::declare_queue(&q.name,
/// &q.bindings)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub bindings: Vec<String>,
}

fn check_word(what: &'static str, value: &str) -> Result<(), RoutingError> {
    let fail = |why| {
        Err(RoutingError {
            what,
            value: value.to_owned(),
            why,
        })
    };
    if value.is_empty() {
        return fail("it is empty");
    }
    if value.len() > MAX_WORD_LEN {
        return fail("it is longer than 63 characters");
    }
    if value.contains('.') {
        return fail("it contains '.', which separates the words of a key");
    }
    if value.contains(['*', '#']) {
        return fail("it contains '*' or '#', which are wildcards in bindings");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return fail("only ASCII letters, digits, '-' and '_' are allowed");
    }
    if !value.as_bytes()[0].is_ascii_alphanumeric() {
        return fail("it must start with a letter or a digit");
    }
    Ok(())
}

/// Checks that `host` can name a host in keys and queues: a DNS-label-like word of ASCII
/// letters, digits, `-` and `_`, starting with a letter or digit, at most 63 characters,
/// and not one of [`RESERVED_HOST_NAMES`].
pub fn validate_host(host: &str) -> Result<(), RoutingError> {
    check_word("host name", host)?;
    if RESERVED_HOST_NAMES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(host))
    {
        return Err(RoutingError {
            what: "host name",
            value: host.to_owned(),
            why: "it is reserved (vm, image, host, reply, control, commands): its command \
                  binding would catch other messages; pick another host name",
        });
    }
    Ok(())
}

/// Checks a control replica's name (same word rules as hosts, no reserved names).
pub fn validate_replica(replica: &str) -> Result<(), RoutingError> {
    check_word("replica name", replica)
}

/// `orchestrator.<host>.vm.<verb>`: a VM command for `host`.
pub fn command_key(host: &str, verb: &str) -> Result<String, RoutingError> {
    validate_host(host)?;
    check_word("verb", verb)?;
    Ok(format!("{ROOT}.{host}.vm.{verb}"))
}

/// `orchestrator.<host>.image.<verb>`: an image command for `host`.
pub fn image_command_key(host: &str, verb: &str) -> Result<String, RoutingError> {
    validate_host(host)?;
    check_word("verb", verb)?;
    Ok(format!("{ROOT}.{host}.image.{verb}"))
}

/// `orchestrator.vm.status.<STATE>.<host>`, STATE in upper case (`RUNNING`).
pub fn status_key(state: VmState, host: &str) -> Result<String, RoutingError> {
    validate_host(host)?;
    Ok(format!("{ROOT}.vm.status.{}.{host}", state.as_str()))
}

/// `orchestrator.image.status.<host>`.
pub fn image_status_key(host: &str) -> Result<String, RoutingError> {
    validate_host(host)?;
    Ok(format!("{ROOT}.image.status.{host}"))
}

/// `orchestrator.host.heartbeat.<host>`.
pub fn heartbeat_key(host: &str) -> Result<String, RoutingError> {
    validate_host(host)?;
    Ok(format!("{ROOT}.host.heartbeat.{host}"))
}

/// `orchestrator.reply.<replica>`: answers (e.g. to an image import or a console read) for
/// one control replica; goes into an envelope's `reply_to`.
pub fn reply_key(replica: &str) -> Result<String, RoutingError> {
    validate_replica(replica)?;
    Ok(format!("{ROOT}.reply.{replica}"))
}

/// `orchestrator.commands.<host>` ← `orchestrator.<host>.#`: every command (VM and image)
/// for one host.
pub fn host_command_queue(host: &str) -> Result<QueueSpec, RoutingError> {
    validate_host(host)?;
    Ok(QueueSpec {
        name: format!("{ROOT}.commands.{host}"),
        bindings: vec![format!("{ROOT}.{host}.#")],
    })
}

/// [`WEB_STATUS_QUEUE`] ← [`WEB_STATUS_BINDING`].
pub fn web_status_queue() -> QueueSpec {
    QueueSpec {
        name: WEB_STATUS_QUEUE.to_owned(),
        bindings: vec![WEB_STATUS_BINDING.to_owned()],
    }
}

/// `orchestrator.vm.status.terminator.running.<host>` ←
/// `orchestrator.vm.status.RUNNING.<host>`: the terminator of `host` hears its VMs start.
pub fn terminator_running_queue(host: &str) -> Result<QueueSpec, RoutingError> {
    validate_host(host)?;
    Ok(QueueSpec {
        name: format!("{ROOT}.vm.status.terminator.running.{host}"),
        bindings: vec![status_key(VmState::Running, host)?],
    })
}

/// `orchestrator.vm.status.terminator.stopped.<host>` ←
/// `orchestrator.vm.status.STOPPED.<host>`: the terminator of `host` hears its VMs stop.
pub fn terminator_stopped_queue(host: &str) -> Result<QueueSpec, RoutingError> {
    validate_host(host)?;
    Ok(QueueSpec {
        name: format!("{ROOT}.vm.status.terminator.stopped.{host}"),
        bindings: vec![status_key(VmState::Stopped, host)?],
    })
}

/// [`CONTROL_HOSTS_QUEUE`] ← [`CONTROL_HOSTS_BINDINGS`]: image statuses and heartbeats.
pub fn control_hosts_queue() -> QueueSpec {
    QueueSpec {
        name: CONTROL_HOSTS_QUEUE.to_owned(),
        bindings: CONTROL_HOSTS_BINDINGS.map(str::to_owned).to_vec(),
    }
}

/// `orchestrator.reply.<replica>` ← the same key: one replica's answers.
pub fn reply_queue(replica: &str) -> Result<QueueSpec, RoutingError> {
    let key = reply_key(replica)?;
    Ok(QueueSpec {
        name: key.clone(),
        bindings: vec![key],
    })
}

impl v1::VmCommand {
    /// The verb of this command's routing key ([`command_key`]), `None` when it carries no
    /// command.
    pub fn verb(&self) -> Option<&'static str> {
        use v1::vm_command::Command;
        Some(match self.command.as_ref()? {
            Command::Create(_) => verb::CREATE,
            Command::Start(_) => verb::START,
            Command::Stop(_) => verb::STOP,
            Command::Delete(_) => verb::DELETE,
            Command::ReadConsole(_) => verb::READ_CONSOLE,
            Command::Exec(_) => verb::EXEC,
            Command::ListServices(_) => verb::LIST_SERVICES,
            Command::ReadLog(_) => verb::READ_LOG,
        })
    }
}

impl v1::ImageCommand {
    /// The verb of this command's routing key ([`image_command_key`]), `None` when it
    /// carries no command.
    pub fn verb(&self) -> Option<&'static str> {
        use v1::image_command::Command;
        Some(match self.command.as_ref()? {
            Command::Import(_) => verb::IMPORT,
            Command::Remove(_) => verb::REMOVE,
            Command::Pull(_) => verb::PULL,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_keys_follow_the_contract() {
        assert_eq!(
            command_key("h1", verb::CREATE).as_deref(),
            Ok("orchestrator.h1.vm.create")
        );
        assert_eq!(
            image_command_key("h1", verb::IMPORT).as_deref(),
            Ok("orchestrator.h1.image.import")
        );
    }

    #[test]
    fn status_key_puts_the_state_in_upper_case_before_the_host() {
        assert_eq!(
            status_key(VmState::Running, "h1").as_deref(),
            Ok("orchestrator.vm.status.RUNNING.h1")
        );
        for state in VmState::ALL {
            let key = status_key(state, "h-2").expect("valid host");
            assert_eq!(
                key,
                format!("orchestrator.vm.status.{}.h-2", state.as_str())
            );
            assert!(key.split('.').nth(3).is_some_and(|w| w == w.to_uppercase()));
        }
    }

    #[test]
    fn host_to_control_keys_follow_the_contract() {
        assert_eq!(
            image_status_key("h1").as_deref(),
            Ok("orchestrator.image.status.h1")
        );
        assert_eq!(
            heartbeat_key("h1").as_deref(),
            Ok("orchestrator.host.heartbeat.h1")
        );
        assert_eq!(reply_key("r1").as_deref(), Ok("orchestrator.reply.r1"));
    }

    #[test]
    fn queues_and_bindings_follow_the_contract() {
        assert_eq!(
            host_command_queue("h1"),
            Ok(QueueSpec {
                name: "orchestrator.commands.h1".into(),
                bindings: vec!["orchestrator.h1.#".into()],
            })
        );
        assert_eq!(
            web_status_queue(),
            QueueSpec {
                name: "orchestrator.vm.status.web".into(),
                bindings: vec!["orchestrator.vm.status.#".into()],
            }
        );
        assert_eq!(
            terminator_running_queue("h1"),
            Ok(QueueSpec {
                name: "orchestrator.vm.status.terminator.running.h1".into(),
                bindings: vec!["orchestrator.vm.status.RUNNING.h1".into()],
            })
        );
        assert_eq!(
            terminator_stopped_queue("h1"),
            Ok(QueueSpec {
                name: "orchestrator.vm.status.terminator.stopped.h1".into(),
                bindings: vec!["orchestrator.vm.status.STOPPED.h1".into()],
            })
        );
        assert_eq!(
            control_hosts_queue(),
            QueueSpec {
                name: "orchestrator.control.hosts".into(),
                bindings: vec![
                    "orchestrator.image.status.#".into(),
                    "orchestrator.host.heartbeat.#".into()
                ],
            }
        );
        assert_eq!(
            reply_queue("r1"),
            Ok(QueueSpec {
                name: "orchestrator.reply.r1".into(),
                bindings: vec!["orchestrator.reply.r1".into()],
            })
        );
    }

    #[test]
    fn host_names_that_would_break_keys_are_refused() {
        for bad in ["", "a.b", "a*", "#", "*", "h 1", "h/1", "ünï", "-h", "_h"] {
            let err = validate_host(bad).expect_err(bad);
            assert_eq!(err.what, "host name");
            assert_eq!(err.value, bad);
            assert!(command_key(bad, verb::CREATE).is_err(), "{bad:?}");
            assert!(status_key(VmState::Running, bad).is_err(), "{bad:?}");
            assert!(heartbeat_key(bad).is_err(), "{bad:?}");
            assert!(host_command_queue(bad).is_err(), "{bad:?}");
            assert!(terminator_running_queue(bad).is_err(), "{bad:?}");
        }
        assert!(validate_host(&"a".repeat(64)).is_err());
    }

    #[test]
    fn dns_label_like_host_names_are_accepted() {
        for good in ["h1", "host-a", "node_7", "A1", &"a".repeat(63)] {
            assert_eq!(validate_host(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn reserved_host_names_are_refused_in_any_case() {
        for bad in ["vm", "VM", "image", "host", "reply", "control", "commands"] {
            let err = validate_host(bad).expect_err(bad);
            assert!(err.to_string().contains("reserved"), "{err}");
        }
    }

    #[test]
    fn error_says_what_and_why() {
        let err = command_key("a.b", "create").expect_err("dot");
        assert_eq!(
            err.to_string(),
            "host name \"a.b\" cannot be used in a routing key: it contains '.', which \
             separates the words of a key"
        );
    }

    #[test]
    fn verbs_and_replicas_are_checked_as_words() {
        assert!(matches!(
            command_key("h1", "cre.ate"),
            Err(RoutingError { what: "verb", .. })
        ));
        assert!(matches!(
            image_command_key("h1", "#"),
            Err(RoutingError { what: "verb", .. })
        ));
        assert!(matches!(
            reply_key(""),
            Err(RoutingError {
                what: "replica name",
                ..
            })
        ));
    }

    #[test]
    fn command_verbs_name_the_oneof_field() {
        use v1::{image_command, vm_command, ImageCommand, VmCommand};
        let vm = |c| VmCommand {
            command: Some(c),
            ..Default::default()
        };
        assert_eq!(
            vm(vm_command::Command::Create(Default::default())).verb(),
            Some("create")
        );
        assert_eq!(
            vm(vm_command::Command::Start(Default::default())).verb(),
            Some("start")
        );
        assert_eq!(
            vm(vm_command::Command::Stop(Default::default())).verb(),
            Some("stop")
        );
        assert_eq!(
            vm(vm_command::Command::Delete(Default::default())).verb(),
            Some("delete")
        );
        assert_eq!(
            vm(vm_command::Command::ReadConsole(Default::default())).verb(),
            Some("read_console")
        );
        assert_eq!(VmCommand::default().verb(), None);
        let image = |c| ImageCommand { command: Some(c) };
        assert_eq!(
            image(image_command::Command::Import(Default::default())).verb(),
            Some("import")
        );
        assert_eq!(
            image(image_command::Command::Remove(Default::default())).verb(),
            Some("remove")
        );
        assert_eq!(
            image(image_command::Command::Pull(Default::default())).verb(),
            Some("pull")
        );
        assert_eq!(ImageCommand::default().verb(), None);
    }

    #[test]
    fn host_command_binding_does_not_catch_other_traffic() {
        // The §3 keys only start with a host name in commands; a valid host can never be
        // a reserved first word, so its queue binding sees only its own commands.
        let binding = &host_command_queue("h1").expect("valid").bindings[0];
        let prefix = binding.trim_end_matches('#');
        for key in [
            status_key(VmState::Running, "h1"),
            image_status_key("h1"),
            heartbeat_key("h1"),
            reply_key("h1"),
        ] {
            assert!(!key.expect("valid").starts_with(prefix));
        }
    }
}
