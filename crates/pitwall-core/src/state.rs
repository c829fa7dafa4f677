//! The VM lifecycle of ARCHITECTURE §4.
//!
//! ```text
//! PENDING → CREATING → STARTING → RUNNING → STOPPING → STOPPED → DELETING → DELETED
//!                          ↑                                │
//!                          └──────────── (start) ───────────┘
//! ```
//! plus `FAILED` (with a reason) from any live state and `LOST` (host silent past its lease).
//! The control plane stores the *desired* state ([`DesiredState`]) with a generation; hosts
//! report the *actual* [`VmState`]. Only the transitions in [`VmState::can_transition_to`] are
//! legal; everything else is refused with a [`TransitionError`].

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VmState {
    Pending,
    Creating,
    Starting,
    Running,
    Stopping,
    Stopped,
    Deleting,
    Deleted,
    Failed,
    Lost,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a VM cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: VmState,
    pub to: VmState,
}

impl VmState {
    pub const ALL: [VmState; 10] = [
        VmState::Pending,
        VmState::Creating,
        VmState::Starting,
        VmState::Running,
        VmState::Stopping,
        VmState::Stopped,
        VmState::Deleting,
        VmState::Deleted,
        VmState::Failed,
        VmState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Pending => "PENDING",
            VmState::Creating => "CREATING",
            VmState::Starting => "STARTING",
            VmState::Running => "RUNNING",
            VmState::Stopping => "STOPPING",
            VmState::Stopped => "STOPPED",
            VmState::Deleting => "DELETING",
            VmState::Deleted => "DELETED",
            VmState::Failed => "FAILED",
            VmState::Lost => "LOST",
        }
    }

    pub fn parse(s: &str) -> Option<VmState> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    /// `DELETED` is the only state a VM never leaves.
    pub fn is_terminal(self) -> bool {
        self == VmState::Deleted
    }

    /// Whether the guest may be executing (a VMM process may exist for it).
    pub fn may_have_vmm(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Stopping
        )
    }

    /// The lifecycle's edges. A self-transition is never a transition (callers treat a
    /// repeated report of the same state as a no-op, not an error).
    pub fn can_transition_to(self, to: VmState) -> bool {
        use VmState::*;
        match (self, to) {
            (Pending, Creating) => true,
            (Creating, Starting) => true,
            // created but left stopped, e.g. the desired state changed to STOPPED meanwhile
            (Creating, Stopped) => true,
            (Starting, Running) => true,
            // the guest or its VMM ended before readiness, or a stop came during boot
            (Starting, Stopping) | (Starting, Stopped) => true,
            (Running, Stopping) => true,
            // the guest powered itself off (its entrypoint ended)
            (Running, Stopped) => true,
            (Stopping, Stopped) => true,
            (Stopped, Starting) => true,
            // delete is allowed from every resting or broken state, and from PENDING/CREATING
            // (the host cleans up whatever it had made)
            (Pending | Creating | Stopped | Failed | Lost, Deleting) => true,
            (Deleting, Deleted) => true,
            // failure from every live state, including a failed delete
            (Pending | Creating | Starting | Running | Stopping | Stopped | Deleting, Failed) => {
                true
            }
            // a failed or lost VM may be started again once its host answers
            (Failed | Lost, Starting) => true,
            // a lost VM's host came back and reported what it really has
            (Lost, Running | Stopped) => true,
            // host silent past its lease
            (Creating | Starting | Running | Stopping | Stopped | Deleting, Lost) => true,
            _ => false,
        }
    }

    pub fn transition(self, to: VmState) -> Result<VmState, TransitionError> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user wants a VM to be. Each change bumps the VM's generation, so hosts and
/// reconcilers can tell a new wish from a replayed old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DesiredState {
    Running,
    Stopped,
    Deleted,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "RUNNING",
            DesiredState::Stopped => "STOPPED",
            DesiredState::Deleted => "DELETED",
        }
    }

    pub fn parse(s: &str) -> Option<DesiredState> {
        [
            DesiredState::Running,
            DesiredState::Stopped,
            DesiredState::Deleted,
        ]
        .into_iter()
        .find(|d| d.as_str().eq_ignore_ascii_case(s))
    }

    /// Whether an actual state already satisfies this wish (nothing left to do).
    pub fn satisfied_by(self, actual: VmState) -> bool {
        match self {
            DesiredState::Running => actual == VmState::Running,
            DesiredState::Stopped => actual == VmState::Stopped,
            DesiredState::Deleted => actual == VmState::Deleted,
        }
    }
}

impl fmt::Display for DesiredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::VmState::*;
    use super::*;

    /// The complete list of legal edges; every pair not listed must be refused.
    const ALLOWED: &[(VmState, VmState)] = &[
        (Pending, Creating),
        (Creating, Starting),
        (Creating, Stopped),
        (Starting, Running),
        (Starting, Stopping),
        (Starting, Stopped),
        (Running, Stopping),
        (Running, Stopped),
        (Stopping, Stopped),
        (Stopped, Starting),
        (Pending, Deleting),
        (Creating, Deleting),
        (Stopped, Deleting),
        (Failed, Deleting),
        (Lost, Deleting),
        (Deleting, Deleted),
        (Pending, Failed),
        (Creating, Failed),
        (Starting, Failed),
        (Running, Failed),
        (Stopping, Failed),
        (Stopped, Failed),
        (Deleting, Failed),
        (Failed, Starting),
        (Lost, Starting),
        (Lost, Running),
        (Lost, Stopped),
        (Creating, Lost),
        (Starting, Lost),
        (Running, Lost),
        (Stopping, Lost),
        (Stopped, Lost),
        (Deleting, Lost),
    ];

    #[test]
    fn every_allowed_transition_is_allowed() {
        for &(from, to) in ALLOWED {
            assert_eq!(from.transition(to), Ok(to), "{from} -> {to}");
        }
    }

    #[test]
    fn every_other_transition_is_refused() {
        let mut refused = 0;
        for from in VmState::ALL {
            for to in VmState::ALL {
                if ALLOWED.contains(&(from, to)) {
                    continue;
                }
                assert_eq!(
                    from.transition(to),
                    Err(TransitionError { from, to }),
                    "{from} -> {to}"
                );
                refused += 1;
            }
        }
        assert_eq!(refused, 100 - ALLOWED.len());
    }

    #[test]
    fn deleted_is_terminal() {
        assert!(Deleted.is_terminal());
        assert!(VmState::ALL.iter().all(|s| !Deleted.can_transition_to(*s)));
    }

    #[test]
    fn names_round_trip_upper_case() {
        for s in VmState::ALL {
            assert_eq!(VmState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(VmState::parse("running"), Some(Running));
        assert_eq!(VmState::parse("nope"), None);
    }

    #[test]
    fn desired_satisfied_only_by_its_state() {
        assert!(DesiredState::Running.satisfied_by(Running));
        assert!(!DesiredState::Running.satisfied_by(Starting));
        assert!(DesiredState::Stopped.satisfied_by(Stopped));
        assert!(DesiredState::Deleted.satisfied_by(Deleted));
    }
}
