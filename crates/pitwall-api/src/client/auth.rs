//! Endpoints of identity and authorisation: logging in, `whoami`, quotas and policies, users
//! of the built-in issuer, delegations, certificates and the audit log.

use serde::Serialize;

use super::{seg, Client, ClientError};
use crate::types::*;

/// Whose quota `GET /v1/quota` shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QuotaOf {
    /// The caller's own.
    #[default]
    Me,
    User(String),
    Group(String),
}

/// `POST /v1/auth/refresh` (there is no type for it in `types.rs`).
#[derive(Serialize)]
struct RefreshRequest<'a> {
    refresh_token: &'a str,
}

impl Client {
    /// `GET /v1/auth/config`: how to log in to this deployment (no token needed).
    pub async fn auth_config(&self) -> Result<AuthConfig, ClientError> {
        self.json(self.get("/v1/auth/config")).await
    }

    /// `POST /v1/auth/login` (built-in issuer only).
    pub async fn login(&self, req: &LoginRequest) -> Result<TokenResponse, ClientError> {
        self.json(self.post("/v1/auth/login").json(req)).await
    }

    /// `POST /v1/auth/refresh` (built-in issuer only): a new access token for a refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenResponse, ClientError> {
        self.json(
            self.post("/v1/auth/refresh")
                .json(&RefreshRequest { refresh_token }),
        )
        .await
    }

    /// `GET /v1/whoami`
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.json(self.get("/v1/whoami")).await
    }

    /// `GET /v1/quota[?user=NAME|group=NAME]`
    pub async fn quota(&self, of: &QuotaOf) -> Result<Quota, ClientError> {
        let path = match of {
            QuotaOf::Me => "/v1/quota".to_owned(),
            QuotaOf::User(u) => format!("/v1/quota?user={}", seg(u)),
            QuotaOf::Group(g) => format!("/v1/quota?group={}", seg(g)),
        };
        self.json(self.get(&path)).await
    }

    /// `GET /v1/policies`
    pub async fn list_policies(&self) -> Result<Vec<PolicyEntry>, ClientError> {
        let l: PolicyList = self.json(self.get("/v1/policies")).await?;
        Ok(l.policies)
    }

    /// `PUT /v1/policies/{holder}`; `holder` is `user:NAME`, `group:NAME` or `default`.
    pub async fn set_policy(
        &self,
        holder: &str,
        policy: &Policy,
    ) -> Result<PolicyEntry, ClientError> {
        self.json(
            self.put(&format!("/v1/policies/{}", seg(holder)))
                .json(policy),
        )
        .await
    }

    /// `DELETE /v1/policies/{holder}`
    pub async fn delete_policy(&self, holder: &str) -> Result<(), ClientError> {
        self.empty(self.delete(&format!("/v1/policies/{}", seg(holder))))
            .await
    }

    /// `POST /v1/users`
    pub async fn create_user(&self, req: &CreateUserRequest) -> Result<User, ClientError> {
        self.json(self.post("/v1/users").json(req)).await
    }

    /// `GET /v1/users`
    pub async fn list_users(&self) -> Result<Vec<User>, ClientError> {
        let l: UserList = self.json(self.get("/v1/users")).await?;
        Ok(l.users)
    }

    /// `DELETE /v1/users/{name}`
    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        self.empty(self.delete(&format!("/v1/users/{}", seg(name))))
            .await
    }

    /// `PUT /v1/users/{name}/password`
    pub async fn set_password(&self, name: &str, password: &str) -> Result<(), ClientError> {
        let body = SetPasswordRequest {
            password: password.to_owned(),
        };
        self.empty(
            self.put(&format!("/v1/users/{}/password", seg(name)))
                .json(&body),
        )
        .await
    }

    /// `POST /v1/delegations`
    pub async fn create_delegation(
        &self,
        req: &CreateDelegationRequest,
    ) -> Result<Delegation, ClientError> {
        self.json(self.post("/v1/delegations").json(req)).await
    }

    /// `GET /v1/delegations`
    pub async fn list_delegations(&self) -> Result<Vec<Delegation>, ClientError> {
        let l: DelegationList = self.json(self.get("/v1/delegations")).await?;
        Ok(l.delegations)
    }

    /// `DELETE /v1/delegations/{id}`: the delegation as revoked.
    pub async fn revoke_delegation(&self, id: &str) -> Result<Delegation, ClientError> {
        self.json(self.delete(&format!("/v1/delegations/{}", seg(id))))
            .await
    }

    /// `POST /v1/certificates`
    pub async fn sign_certificate(
        &self,
        req: &SignCertificateRequest,
    ) -> Result<SignedCertificate, ClientError> {
        self.json(self.post("/v1/certificates").json(req)).await
    }

    /// `GET /v1/certificates/ca`: the deployment CA certificate, PEM.
    pub async fn ca_certificate(&self) -> Result<String, ClientError> {
        let resp = self.send(self.get("/v1/certificates/ca")).await?;
        resp.text().await.map_err(|e| self.transport(e))
    }

    /// `POST /v1/certificates/revoked`
    pub async fn revoke_certificate(
        &self,
        req: &RevokeCertificateRequest,
    ) -> Result<(), ClientError> {
        self.empty(self.post("/v1/certificates/revoked").json(req))
            .await
    }

    /// `GET /v1/audit?after=SEQ&limit=N[&actor=NAME]`; `None`s are left to the server.
    pub async fn audit(
        &self,
        after: Option<u64>,
        limit: Option<u32>,
        actor: Option<&str>,
    ) -> Result<Vec<AuditEntry>, ClientError> {
        let mut query = Vec::new();
        if let Some(a) = after {
            query.push(format!("after={a}"));
        }
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        if let Some(a) = actor {
            query.push(format!("actor={}", seg(a)));
        }
        let mut path = "/v1/audit".to_owned();
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        let l: AuditList = self.json(self.get(&path)).await?;
        Ok(l.entries)
    }
}
