//! Conversions between `pitwall-core`'s states and the wire enums. The wire's `UNSPECIFIED`
//! (proto3's zero default) has no domain meaning and is refused.

use pitwall_core::{DesiredState, RestartPolicy, RunOverrides, ServiceSpec, VmState};

use crate::v1;
use crate::ProtoError;

impl From<&RunOverrides> for v1::RunOverrides {
    fn from(r: &RunOverrides) -> Self {
        let list = |v: &Option<Vec<String>>| {
            v.as_ref().map(|values| v1::StringList {
                values: values.clone(),
            })
        };
        Self {
            entrypoint: list(&r.entrypoint),
            cmd: list(&r.cmd),
            env: r.env.clone(),
            working_dir: r.working_dir.clone(),
            user: r.user.clone(),
            services: r.services.iter().map(v1::Service::from).collect(),
        }
    }
}

impl From<&v1::RunOverrides> for RunOverrides {
    fn from(r: &v1::RunOverrides) -> Self {
        Self {
            entrypoint: r.entrypoint.as_ref().map(|l| l.values.clone()),
            cmd: r.cmd.as_ref().map(|l| l.values.clone()),
            env: r.env.clone(),
            working_dir: r.working_dir.clone(),
            user: r.user.clone(),
            services: r.services.iter().map(ServiceSpec::from).collect(),
        }
    }
}

impl From<RestartPolicy> for v1::RestartPolicy {
    fn from(p: RestartPolicy) -> Self {
        match p {
            RestartPolicy::Never => v1::RestartPolicy::Never,
            RestartPolicy::OnFailure => v1::RestartPolicy::OnFailure,
            RestartPolicy::Always => v1::RestartPolicy::Always,
        }
    }
}

impl From<v1::RestartPolicy> for RestartPolicy {
    fn from(p: v1::RestartPolicy) -> Self {
        match p {
            v1::RestartPolicy::Never => RestartPolicy::Never,
            v1::RestartPolicy::OnFailure => RestartPolicy::OnFailure,
            v1::RestartPolicy::Always => RestartPolicy::Always,
        }
    }
}

/// A declared service on the wire: absent working dir and user travel as empty strings
/// (the VM's own).
impl From<&ServiceSpec> for v1::Service {
    fn from(s: &ServiceSpec) -> Self {
        Self {
            name: s.name.clone(),
            argv: s.command.clone(),
            env: s.env.clone(),
            working_dir: s.working_dir.clone().unwrap_or_default(),
            user: s.user.clone().unwrap_or_default(),
            restart: v1::RestartPolicy::from(s.restart).into(),
        }
    }
}

impl From<&v1::Service> for ServiceSpec {
    fn from(s: &v1::Service) -> Self {
        let some = |v: &String| (!v.is_empty()).then(|| v.clone());
        Self {
            name: s.name.clone(),
            command: s.argv.clone(),
            env: s.env.clone(),
            working_dir: some(&s.working_dir),
            user: some(&s.user),
            // An unknown value (a newer sender) is the safe default.
            restart: v1::RestartPolicy::try_from(s.restart)
                .unwrap_or_default()
                .into(),
        }
    }
}

impl From<VmState> for v1::VmState {
    fn from(state: VmState) -> Self {
        match state {
            VmState::Pending => v1::VmState::Pending,
            VmState::Creating => v1::VmState::Creating,
            VmState::Starting => v1::VmState::Starting,
            VmState::Running => v1::VmState::Running,
            VmState::Stopping => v1::VmState::Stopping,
            VmState::Stopped => v1::VmState::Stopped,
            VmState::Deleting => v1::VmState::Deleting,
            VmState::Deleted => v1::VmState::Deleted,
            VmState::Failed => v1::VmState::Failed,
            VmState::Lost => v1::VmState::Lost,
        }
    }
}

impl TryFrom<v1::VmState> for VmState {
    type Error = ProtoError;

    fn try_from(state: v1::VmState) -> Result<Self, ProtoError> {
        Ok(match state {
            v1::VmState::Unspecified => return Err(ProtoError::Unspecified { what: "VmState" }),
            v1::VmState::Pending => VmState::Pending,
            v1::VmState::Creating => VmState::Creating,
            v1::VmState::Starting => VmState::Starting,
            v1::VmState::Running => VmState::Running,
            v1::VmState::Stopping => VmState::Stopping,
            v1::VmState::Stopped => VmState::Stopped,
            v1::VmState::Deleting => VmState::Deleting,
            v1::VmState::Deleted => VmState::Deleted,
            v1::VmState::Failed => VmState::Failed,
            v1::VmState::Lost => VmState::Lost,
        })
    }
}

impl From<DesiredState> for v1::DesiredState {
    fn from(state: DesiredState) -> Self {
        match state {
            DesiredState::Running => v1::DesiredState::Running,
            DesiredState::Stopped => v1::DesiredState::Stopped,
            DesiredState::Deleted => v1::DesiredState::Deleted,
        }
    }
}

impl TryFrom<v1::DesiredState> for DesiredState {
    type Error = ProtoError;

    fn try_from(state: v1::DesiredState) -> Result<Self, ProtoError> {
        Ok(match state {
            v1::DesiredState::Unspecified => {
                return Err(ProtoError::Unspecified {
                    what: "DesiredState",
                })
            }
            v1::DesiredState::Running => DesiredState::Running,
            v1::DesiredState::Stopped => DesiredState::Stopped,
            v1::DesiredState::Deleted => DesiredState::Deleted,
        })
    }
}

/// The domain state of a raw wire value (the `i32` prost stores in messages, e.g.
/// `VmStatus::state`); refuses `UNSPECIFIED` and values this build does not know.
pub fn vm_state_from_wire(value: i32) -> Result<VmState, ProtoError> {
    v1::VmState::try_from(value)
        .map_err(|_| ProtoError::UnknownEnumValue {
            what: "VmState",
            value,
        })?
        .try_into()
}

/// The domain desired state of a raw wire value; refuses `UNSPECIFIED` and unknown values.
pub fn desired_state_from_wire(value: i32) -> Result<DesiredState, ProtoError> {
    v1::DesiredState::try_from(value)
        .map_err(|_| ProtoError::UnknownEnumValue {
            what: "DesiredState",
            value,
        })?
        .try_into()
}

impl v1::VmStatus {
    /// The reported state in domain terms (see [`vm_state_from_wire`]).
    pub fn core_state(&self) -> Result<VmState, ProtoError> {
        vm_state_from_wire(self.state)
    }

    /// Sets the reported state from its domain value.
    pub fn set_core_state(&mut self, state: VmState) {
        self.set_state(state.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vm_state_round_trips_through_the_wire() {
        for state in VmState::ALL {
            let wire = v1::VmState::from(state);
            assert_eq!(VmState::try_from(wire), Ok(state));
            assert_eq!(vm_state_from_wire(wire as i32), Ok(state));
        }
    }

    #[test]
    fn vm_state_wire_names_match_the_domain_names() {
        for state in VmState::ALL {
            let wire = v1::VmState::from(state);
            assert_eq!(wire.as_str_name(), format!("VM_STATE_{}", state.as_str()));
        }
    }

    #[test]
    fn unspecified_vm_state_is_an_error() {
        assert_eq!(
            VmState::try_from(v1::VmState::Unspecified),
            Err(ProtoError::Unspecified { what: "VmState" })
        );
        assert_eq!(
            vm_state_from_wire(0),
            Err(ProtoError::Unspecified { what: "VmState" })
        );
    }

    #[test]
    fn unknown_vm_state_value_is_an_error() {
        let err = vm_state_from_wire(99).expect_err("99 is no state");
        assert_eq!(
            err,
            ProtoError::UnknownEnumValue {
                what: "VmState",
                value: 99
            }
        );
        assert!(err.to_string().contains("99"));
    }

    #[test]
    fn every_desired_state_round_trips_through_the_wire() {
        for state in [
            DesiredState::Running,
            DesiredState::Stopped,
            DesiredState::Deleted,
        ] {
            let wire = v1::DesiredState::from(state);
            assert_eq!(DesiredState::try_from(wire), Ok(state));
            assert_eq!(desired_state_from_wire(wire as i32), Ok(state));
            assert_eq!(
                wire.as_str_name(),
                format!("DESIRED_STATE_{}", state.as_str())
            );
        }
    }

    #[test]
    fn unspecified_or_unknown_desired_state_is_an_error() {
        assert!(matches!(
            DesiredState::try_from(v1::DesiredState::Unspecified),
            Err(ProtoError::Unspecified { .. })
        ));
        assert!(matches!(
            desired_state_from_wire(-1),
            Err(ProtoError::UnknownEnumValue { value: -1, .. })
        ));
    }

    #[test]
    fn vm_status_state_accessors_speak_domain_states() {
        let mut status = v1::VmStatus::default();
        assert!(status.core_state().is_err(), "default is UNSPECIFIED");
        status.set_core_state(VmState::Stopped);
        assert_eq!(status.state, v1::VmState::Stopped as i32);
        assert_eq!(status.core_state(), Ok(VmState::Stopped));
    }
}

#[cfg(test)]
mod run_tests {
    use super::*;

    #[test]
    fn run_overrides_cross_the_wire_unchanged() {
        let cases = [
            RunOverrides::default(),
            RunOverrides {
                entrypoint: Some(vec![]),
                cmd: Some(vec!["a".into(), "".into()]),
                env: vec!["A=1".into()],
                working_dir: Some(String::new()),
                user: Some("1000".into()),
                services: vec![
                    ServiceSpec {
                        name: "main".into(),
                        restart: RestartPolicy::Always,
                        ..Default::default()
                    },
                    ServiceSpec {
                        name: "cron".into(),
                        command: vec!["/bin/cron".into(), "-f".into()],
                        env: vec!["A=1".into()],
                        working_dir: Some("/srv".into()),
                        user: Some("www".into()),
                        restart: RestartPolicy::OnFailure,
                    },
                ],
            },
        ];
        for r in cases {
            let wire = v1::RunOverrides::from(&r);
            let bytes = prost::Message::encode_to_vec(&wire);
            let back: v1::RunOverrides = prost::Message::decode(&bytes[..]).expect("decode");
            assert_eq!(RunOverrides::from(&back), r);
        }
    }
}
