//! `pitwall user ...`: users of the built-in issuer.

use pitwall_api::{CreateUserRequest, User};

use super::login::read_password;
use super::Ctx;
use crate::cli::{UserCommand, UserCreateArgs};
use crate::output;

/// The role that makes a user an administrator (the server's default admin role).
pub const ADMIN_ROLE: &str = "pitwall-admin";

pub async fn run(ctx: &Ctx, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Create(a) => create(ctx, a).await,
        UserCommand::List => {
            let users = ctx.client.list_users().await?;
            ctx.show(&users, |u, now| user_table(u, now))
        }
        UserCommand::Delete { name } => {
            ctx.client.delete_user(&name).await?;
            ctx.show(&serde_json::json!({ "deleted": name }), |_, _| {
                format!("deleted user {name}\n")
            })
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            let password = read_password(password_stdin, &format!("new password for {name}: "))?;
            ctx.client.set_password(&name, &password).await?;
            ctx.show(&serde_json::json!({ "password_set": name }), |_, _| {
                format!("password of {name} changed\n")
            })
        }
    }
}

/// The request `user create` sends: `--admin` adds the administrator role.
pub fn create_request(a: &UserCreateArgs, password: String) -> CreateUserRequest {
    let mut roles = a.roles.clone();
    if a.admin && !roles.iter().any(|r| r == ADMIN_ROLE) {
        roles.push(ADMIN_ROLE.to_owned());
    }
    CreateUserRequest {
        username: a.name.clone(),
        password,
        roles,
        groups: a.groups.clone(),
    }
}

async fn create(ctx: &Ctx, a: UserCreateArgs) -> anyhow::Result<()> {
    let password = read_password(a.password_stdin, &format!("password for {}: ", a.name))?;
    let user = ctx
        .client
        .create_user(&create_request(&a, password))
        .await?;
    ctx.show(&user, |u, _| {
        format!(
            "created user {}{}\n",
            u.username,
            if u.admin { " (administrator)" } else { "" }
        )
    })
}

pub fn user_table(users: &[User], now: time::OffsetDateTime) -> String {
    let list = |l: &[String]| {
        if l.is_empty() {
            "-".to_owned()
        } else {
            l.join(",")
        }
    };
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.username.clone(),
                if u.admin { "yes" } else { "no" }.into(),
                list(&u.groups),
                list(&u.roles),
                if u.disabled { "disabled" } else { "active" }.into(),
                output::age(&u.created_at, now),
            ]
        })
        .collect();
    output::table(
        &["NAME", "ADMIN", "GROUPS", "ROLES", "STATUS", "AGE"],
        &rows,
    )
}
