//! Compiles `proto/runcast/v1` with protox (pure Rust: no system `protoc`) and generates the
//! prost types, the tonic services and the serde impls behind the JSON form of the contract.
//!
//! Serde (and OpenAPI schema) attributes are derived from the descriptors rather than listed by hand, so a new enum,
//! timestamp or struct field gets its JSON mapping without anyone remembering to add it.

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use std::path::PathBuf;

const PROTO_ROOT: &str = "../../proto";
const PROTO_FILES: &[&str] = &[
    "runcast/v1/events.proto",
    "runcast/v1/execution_service.proto",
    "runcast/v1/agent_service.proto",
    "runcast/v1/gateway.proto",
];
const PACKAGE: &str = ".runcast.v1";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let fds = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("runcast_descriptor.bin"), fds.encode_to_vec())?;

    let mut builder = tonic_prost_build::configure()
        .message_attribute(
            PACKAGE,
            "#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)] #[serde(default)]",
        )
        .enum_attribute(
            ".runcast.v1.Event.payload",
            "#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)] #[serde(rename_all = \"snake_case\")]",
        )
        // `state` is the entity itself in JSON (see json.rs): an execution or an agent. Serde impls
        // are hand-written; `untagged` here only tells the schema so.
        .enum_attribute(".runcast.v1.Event.state", "#[derive(utoipa::ToSchema)] #[serde(untagged)]")
        // Most events have none: their JSON (every frame a gateway fans out) stays as it was.
        .field_attribute(".runcast.v1.Event.request_id", "#[serde(skip_serializing_if = \"String::is_empty\")]");

    for file in &fds.file {
        for message in &file.message_type {
            let message_path = format!("{PACKAGE}.{}", message.name());
            for field in &message.field {
                if field.oneof_index.is_some() {
                    continue; // oneof variants hold messages whose own fields carry the attributes
                }
                let repeated = field.label() == Label::Repeated;
                let attribute = match (field.r#type(), field.type_name()) {
                    (Type::Enum, enum_path) => {
                        let rust_type = enum_path.trim_start_matches(&format!("{PACKAGE}."));
                        let (ser, de, suffix) = if repeated {
                            ("serialize_enums", "deserialize_enums", "_list")
                        } else {
                            ("serialize_enum", "deserialize_enum", "")
                        };
                        // The document lists the wire names (`"running"`), not protobuf's integers.
                        let schema = format!("crate::openapi::{}{suffix}", snake_case(rust_type));
                        format!(
                            "#[serde(serialize_with = \"crate::json::{ser}::<crate::v1::{rust_type}, _>\", \
                             deserialize_with = \"crate::json::{de}::<crate::v1::{rust_type}, _>\")] \
                             #[schema(schema_with = {schema})]"
                        )
                    }
                    (Type::Message, ".google.protobuf.Timestamp") if !repeated => {
                        "#[serde(with = \"crate::json::timestamp\", skip_serializing_if = \"Option::is_none\")] \
                         #[schema(value_type = Option<String>, format = DateTime, default = json!(null))]"
                            .to_owned()
                    }
                    (Type::Message, ".google.protobuf.Struct") if !repeated => {
                        "#[serde(with = \"crate::json::structure\", skip_serializing_if = \"Option::is_none\")] \
                         #[schema(value_type = Option<Object>, default = json!(null))]"
                            .to_owned()
                    }
                    _ => continue,
                };
                builder = builder.field_attribute(format!("{message_path}.{}", field.name()), attribute);
            }
        }
    }

    builder.compile_fds(fds)?;
    Ok(())
}

/// `ExecutionStatus` → `execution_status`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (index, character) in name.chars().enumerate() {
        if character.is_ascii_uppercase() {
            if index > 0 {
                out.push('_');
            }
            out.push(character.to_ascii_lowercase());
        } else {
            out.push(character);
        }
    }
    out
}
