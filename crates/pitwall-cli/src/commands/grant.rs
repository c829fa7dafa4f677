//! `pitwall grant VM [USER] [--revoke]`: who besides the owner may connect to a VM.

use pitwall_api::VmGrantList;

use super::Ctx;
use crate::cli::GrantArgs;
use crate::output;

pub async fn run(ctx: &Ctx, a: GrantArgs) -> anyhow::Result<()> {
    match (a.user, a.revoke) {
        (None, _) => {
            let list = ctx.client.vm_grants(&a.vm).await?;
            ctx.show(&list, |l, _| grant_table(l))
        }
        (Some(user), false) => {
            let g = ctx.client.grant_vm(&a.vm, &user).await?;
            let owner = ctx.client.get_vm(&a.vm).await?.owner;
            ctx.show(&g, |g, _| {
                format!(
                    "{} may now connect to {} (`pitwall ssh {}`); take it back with `pitwall grant {} {} --revoke`\n",
                    g.user,
                    a.vm,
                    qualified(&a.vm, &owner),
                    a.vm,
                    g.user
                )
            })
        }
        (Some(user), true) => {
            ctx.client.revoke_vm_grant(&a.vm, &user).await?;
            let done = serde_json::json!({ "vm": a.vm, "user": user, "revoked": true });
            ctx.show(&done, |_, _| {
                format!("{user} may no longer connect to {}\n", a.vm)
            })
        }
    }
}

/// How a grantee names the VM: `OWNER:NAME` (they do not own it).
fn qualified(vm: &str, owner: &str) -> String {
    if vm.contains(':') {
        vm.to_string()
    } else {
        format!("{owner}:{vm}")
    }
}

/// USER, GRANTED BY, SINCE.
pub fn grant_table(l: &VmGrantList) -> String {
    if l.grants.is_empty() {
        return "no grants: only the owner (and administrators) may connect\n".into();
    }
    let rows: Vec<Vec<String>> = l
        .grants
        .iter()
        .map(|g| vec![g.user.clone(), g.granted_by.clone(), g.created_at.clone()])
        .collect();
    output::table(&["USER", "GRANTED BY", "SINCE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grantee_is_told_the_owner_qualified_name() {
        assert_eq!(qualified("web", "alice"), "alice:web");
        assert_eq!(qualified("alice:web", "alice"), "alice:web");
    }

    #[test]
    fn an_empty_list_says_who_may_connect() {
        let t = grant_table(&VmGrantList { grants: vec![] });
        assert!(t.contains("only the owner"), "{t}");
    }
}
