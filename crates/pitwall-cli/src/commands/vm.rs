//! `pitwall vm ...`: create, list, show, start, stop, delete, wait, console.

use std::time::Duration;

use anyhow::Context as _;
use pitwall_api::{Client, ClientError, CreateVmRequest, ExecRequest, RunOverrides, Vm};
use tokio::time::MissedTickBehavior;

use super::Ctx;
use crate::cli::{
    ActionArgs, ConsoleArgs, CreateArgs, ExecArgs, OutputFormat, VmCommand, WaitArgs,
};
use crate::console::Follower;
use crate::exit::RemoteExit;
use crate::output;

/// How often `vm console --follow` polls.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// States after which a console gets no more output.
const FINAL_STATES: [&str; 3] = ["STOPPED", "DELETED", "FAILED"];

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("VM {vm} is FAILED{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Failed { vm: String, reason: Option<String> },
    #[error("VM {vm} is {actual}, not {wanted}: the API stopped waiting before it got there")]
    Unexpected {
        vm: String,
        wanted: String,
        actual: String,
    },
}

pub async fn run(ctx: &Ctx, command: VmCommand) -> anyhow::Result<()> {
    match command {
        VmCommand::Create(a) => create(ctx, *a).await,
        VmCommand::List => {
            let vms = ctx.client.list_vms().await?;
            ctx.show(&vms, |vms, now| output::vm_table(vms, now))
        }
        VmCommand::Show { name } => {
            let vm = ctx.client.get_vm(&name).await?;
            ctx.show(&vm, output::vm_details)
        }
        VmCommand::Start(a) => action(ctx, Action::Start, a).await,
        VmCommand::Stop(a) => action(ctx, Action::Stop, a).await,
        VmCommand::Delete(a) => action(ctx, Action::Delete, a).await,
        VmCommand::Wait(a) => wait(ctx, a).await,
        VmCommand::Console(a) => console(ctx, a).await,
        VmCommand::Logs {
            name,
            service,
            max_bytes,
        } => {
            use std::io::Write as _;
            let data = ctx
                .client
                .logs(&name, service.as_deref(), max_bytes)
                .await?;
            let mut out = std::io::stdout();
            out.write_all(&data)?;
            out.flush()?;
            Ok(())
        }
        VmCommand::Services { name } => {
            let services = ctx.client.services(&name).await?;
            ctx.show(&services, |s, _| output::service_table(s))
        }
    }
}

/// Most bytes `exec -i` sends (the API's limit).
const MAX_EXEC_STDIN: u64 = 1 << 20;

/// `pitwall exec VM -- CMD`: the output as the guest captured it, and its exit status.
pub async fn exec(ctx: &Ctx, a: ExecArgs) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut stdin = Vec::new();
    if a.interactive {
        std::io::stdin()
            .take(MAX_EXEC_STDIN + 1)
            .read_to_end(&mut stdin)
            .context("cannot read standard input")?;
        anyhow::ensure!(
            stdin.len() as u64 <= MAX_EXEC_STDIN,
            "standard input holds more than {MAX_EXEC_STDIN} bytes: copy large files with scp or sftp (`pitwall ssh-config`)"
        );
    }
    let timeout_ms = u32::try_from(a.timeout.as_millis())
        .ok()
        .filter(|ms| *ms > 0)
        .context("--timeout must be from 1ms to about 49 days")?;
    let req = ExecRequest {
        command: a.command,
        env: a.env,
        working_dir: a.workdir,
        user: a.user,
        stdin,
        timeout_ms: Some(timeout_ms),
    };
    let out = ctx.client.exec(&a.vm, &req).await?;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stdout().flush()?;
    std::io::stderr().write_all(&out.stderr)?;
    if out.timed_out {
        anyhow::bail!(
            "the command was killed after {} (--timeout)",
            humantime::format_duration(a.timeout)
        );
    }
    match u8::try_from(out.code) {
        Ok(0) => Ok(()),
        Ok(code) => Err(RemoteExit(code).into()),
        Err(_) => Err(RemoteExit(1).into()),
    }
}

async fn create(ctx: &Ctx, a: CreateArgs) -> anyhow::Result<()> {
    let req = CreateVmRequest {
        name: a.name.clone(),
        image: a.image,
        vcpus: a.vcpus,
        memory_mib: a.memory,
        disk_mib: a.disk,
        start: a.no_start.then_some(false),
        group: a.group,
        delegation: a.delegation,
        run: RunOverrides {
            entrypoint: a
                .entrypoint
                .map(|e| if e.is_empty() { vec![] } else { vec![e] }),
            cmd: (!a.cmd.is_empty()).then_some(a.cmd),
            env: a.env,
            working_dir: a.workdir,
            user: a.user,
            services: a.services,
        },
    };
    let vm = ctx.client.create_vm(&req).await?;
    tracing::info!(vm = %vm.name, vm_id = %vm.id, state = %vm.state, "VM created");
    if !a.wait {
        return ctx.show(&vm, |vm, _| {
            format!("created VM {} ({})\n", vm.name, vm.state)
        });
    }
    say(ctx, &format!("created VM {} ({})\n", vm.name, vm.state))?;
    let target = if a.no_start { "STOPPED" } else { "RUNNING" };
    let reached = wait_for(&ctx.client, &a.name, target, a.timeout)
        .await
        .with_context(|| format!("VM {} was created, but is not {target}", a.name))?;
    show_reached(ctx, &a.name, target, reached.as_ref().unwrap_or(&vm))
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Start,
    Stop,
    Delete,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Delete => "delete",
        }
    }

    /// The state `--wait` waits for.
    fn target(self) -> &'static str {
        match self {
            Action::Start => "RUNNING",
            Action::Stop => "STOPPED",
            Action::Delete => "DELETED",
        }
    }
}

async fn action(ctx: &Ctx, action: Action, a: ActionArgs) -> anyhow::Result<()> {
    let vm = match action {
        Action::Start => ctx.client.start_vm(&a.name).await?,
        Action::Stop => ctx.client.stop_vm(&a.name).await?,
        Action::Delete => ctx.client.delete_vm(&a.name).await?,
    };
    tracing::info!(vm = %vm.name, vm_id = %vm.id, state = %vm.state, action = action.verb(), "requested");
    let requested = format!(
        "VM {}: {} requested, now {}\n",
        vm.name,
        action.verb(),
        vm.state
    );
    if !a.wait {
        return ctx.show(&vm, |_, _| requested);
    }
    say(ctx, &requested)?;
    let target = action.target();
    let reached = wait_for(&ctx.client, &a.name, target, a.timeout).await?;
    // a deleted VM may be gone already: show it as the delete left it
    show_reached(ctx, &a.name, target, reached.as_ref().unwrap_or(&vm))
}

async fn wait(ctx: &Ctx, a: WaitArgs) -> anyhow::Result<()> {
    match wait_for(&ctx.client, &a.name, &a.state, a.timeout).await? {
        Some(vm) => show_reached(ctx, &a.name, &a.state, &vm),
        None => match ctx.format {
            OutputFormat::Json => Ok(output::emit("null\n")?),
            OutputFormat::Text => Ok(output::emit(&format!("VM {} is DELETED\n", a.name))?),
        },
    }
}

/// Wait until VM `name` is in `state`. `Ok(None)` when waiting for DELETED and the VM is gone
/// altogether (the API answers not_found then).
pub async fn wait_for(
    client: &Client,
    name: &str,
    state: &str,
    timeout: Duration,
) -> anyhow::Result<Option<Vm>> {
    tracing::debug!(vm = name, state, ?timeout, "waiting");
    match client.wait_vm(name, state, timeout).await {
        Ok(vm) if vm.state == state => Ok(Some(vm)),
        Ok(vm) if vm.state == "FAILED" => Err(WaitError::Failed {
            vm: vm.name,
            reason: vm.reason,
        }
        .into()),
        Ok(vm) => Err(WaitError::Unexpected {
            vm: vm.name,
            wanted: state.to_owned(),
            actual: vm.state,
        }
        .into()),
        Err(ClientError::Api { code, .. }) if code == "not_found" && state == "DELETED" => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn show_reached(ctx: &Ctx, name: &str, state: &str, vm: &Vm) -> anyhow::Result<()> {
    ctx.show(vm, |vm, _| match vm.host.as_deref() {
        Some(host) if state == "RUNNING" => format!("VM {name} is {state} on {host}\n"),
        _ => format!("VM {name} is {state}\n"),
    })
}

/// A progress line for people; nothing in JSON mode, where stdout carries one JSON value.
fn say(ctx: &Ctx, text: &str) -> anyhow::Result<()> {
    if ctx.format == OutputFormat::Text {
        output::emit(text)?;
    }
    Ok(())
}

async fn console(ctx: &Ctx, a: ConsoleArgs) -> anyhow::Result<()> {
    if !a.follow {
        let bytes = ctx.client.console(&a.name, a.max_bytes).await?;
        output::emit_bytes(&bytes)?;
        return Ok(());
    }
    tokio::select! {
        r = follow_console(&ctx.client, &a.name, a.max_bytes) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Print the console and then its new bytes every [`FOLLOW_EVERY`] until the VM is STOPPED,
/// DELETED (or gone) or FAILED; the last two are errors only for FAILED.
async fn follow_console(client: &Client, name: &str, max_bytes: Option<u32>) -> anyhow::Result<()> {
    let gone = |e: &ClientError| e.code() == Some("not_found");
    let mut follower = Follower::new();
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tick.tick().await;
        // state first: whatever the VM wrote before it stopped is in the tail fetched after
        let vm = match client.get_vm(name).await {
            Ok(vm) => Some(vm),
            Err(e) if gone(&e) && !first => None,
            Err(e) => return Err(e.into()),
        };
        first = false;
        match client.console(name, max_bytes).await {
            Ok(tail) => output::emit_bytes(follower.new_bytes(&tail))?,
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let Some(vm) = vm else { return Ok(()) };
        if FINAL_STATES.contains(&vm.state.as_str()) {
            tracing::debug!(vm = name, state = %vm.state, "console follow ends");
            if vm.state == "FAILED" {
                return Err(WaitError::Failed {
                    vm: vm.name,
                    reason: vm.reason,
                }
                .into());
            }
            return Ok(());
        }
    }
}
