//! Bulk apply (`POST /v1/jobs:apply`): a set of job manifests, an optional
//! prune selector and a dry-run flag in; a plan (create / update / delete /
//! unchanged per job) out. Also the manifest form of one job, [`JobManifest`]:
//! its `id` beside the fields of `PUT /v1/jobs/{id}`, as the CLI's files hold it.

use crate::job::JobSpec;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// One job as a manifest document: `{"id": "...", ...spec}`.
///
/// Deserializing refuses unknown fields (the spec's own rule), which a plain
/// `#[serde(flatten)]` would silently drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobManifest {
    pub id: String,
    pub spec: JobSpec,
}

#[derive(Serialize)]
struct ManifestOut<'a> {
    id: &'a str,
    #[serde(flatten)]
    spec: &'a JobSpec,
}

impl Serialize for JobManifest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ManifestOut {
            id: &self.id,
            spec: &self.spec,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for JobManifest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let id = match map.remove("id") {
            Some(serde_json::Value::String(id)) => id,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "id: expected a string, found {other}"
                )))
            }
            None => return Err(D::Error::missing_field("id")),
        };
        let spec = JobManifest::spec_from_map(map).map_err(D::Error::custom)?;
        Ok(JobManifest { id, spec })
    }
}

impl JobManifest {
    /// Parses the spec part of a manifest (everything but `id`), reporting the
    /// JSON path of a bad field as `(path, message)`.
    pub fn spec_from_map(
        map: serde_json::Map<String, serde_json::Value>,
    ) -> Result<JobSpec, FieldError> {
        serde_path_to_error::deserialize(serde_json::Value::Object(map)).map_err(|e| {
            let path = e.path().to_string();
            FieldError {
                field: (path != ".").then_some(path),
                message: e.into_inner().to_string(),
            }
        })
    }
}

/// A manifest's schema: the spec's (unknown fields refused) with a required `id`.
impl utoipa::PartialSchema for JobManifest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{Schema, Type};
        use utoipa::openapi::{ObjectBuilder, RefOr};
        let mut schema = <JobSpec as utoipa::PartialSchema>::schema();
        if let RefOr::T(Schema::Object(obj)) = &mut schema {
            obj.properties.insert(
                "id".to_string(),
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("The job's id"))
                    .into(),
            );
            obj.required.insert(0, "id".to_string());
        }
        schema
    }
}

impl utoipa::ToSchema for JobManifest {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <JobSpec as utoipa::ToSchema>::schemas(schemas);
    }
}

/// Like [`JobManifest::spec_from_map`], reading a spec object by reference.
pub fn spec_from_value(value: &serde_json::Value) -> Result<JobSpec, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        FieldError {
            field: (path != ".").then_some(path),
            message: e.into_inner().to_string(),
        }
    })
}

/// A field-level decoding error: which field (JSON path) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Which stored jobs a bulk apply may delete: those carrying all these job
/// labels that are not in the request.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Prune {
    pub labels: BTreeMap<String, String>,
}

/// The body of `POST /v1/jobs:apply`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    pub jobs: Vec<JobManifest>,
    #[serde(default)]
    pub prune: Option<Prune>,
    #[serde(default)]
    pub dry_run: bool,
}

/// What applying does to one job.
#[derive(
    Clone,
    Copy,
    Debug,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Delete,
    Unchanged,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Unchanged => "unchanged",
        }
    }
}

/// One line of the plan.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PlanEntry {
    pub id: String,
    pub action: Action,
    /// Top-level spec fields that differ (updates only), e.g. `["schedule"]`.
    #[serde(default)]
    pub changes: Vec<String>,
}

/// The answer of `POST /v1/jobs:apply`: the plan, in request order followed
/// by deletions, and whether it was written (false for a dry run).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ApplyResponse {
    pub plan: Vec<PlanEntry>,
    pub applied: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_refuses_unknown_fields() {
        let m: JobManifest = serde_json::from_str(
            r#"{"id":"a","schedule":"@hourly","executor":{"type":"exec","argv":["x"]},"labels":{"team":"billing"}}"#,
        )
        .unwrap();
        assert_eq!(m.id, "a");
        assert_eq!(m.spec.labels["team"], "billing");
        let text = serde_json::to_string(&m).unwrap();
        assert!(
            text.starts_with(r#"{"id":"a","schedule":"@hourly""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<JobManifest>(&text).unwrap(), m);
        let err = serde_json::from_str::<JobManifest>(
            r#"{"id":"a","schedule":"@hourly","executor":{"type":"exec","argv":["x"]},"retrys":{}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("retrys"), "{err}");
        let err = serde_json::from_str::<JobManifest>(r#"{"schedule":"@hourly"}"#).unwrap_err();
        assert!(err.to_string().contains("id"), "{err}");
    }

    #[test]
    fn field_errors_name_the_path() {
        let map = serde_json::json!({"schedule": "@hourly", "executor": {"type": "exec", "argv": ["x"]}, "retries": {"max": "x"}});
        let serde_json::Value::Object(map) = map else {
            unreachable!()
        };
        let err = JobManifest::spec_from_map(map).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("retries.max"), "{err}");
    }
}
