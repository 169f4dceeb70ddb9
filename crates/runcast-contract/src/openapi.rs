//! OpenAPI schemas of the wire enums: JSON carries them as their lowercase names (`"running"`),
//! so the document lists those names (`enum`) instead of protobuf's integers. Referenced from the
//! generated types' `#[schema(schema_with = …)]` attributes (see build.rs).

use crate::WireEnum;
use crate::v1::{AgentStatus, ApprovalStatus, EventType, ExecutionStatus, LogStream, StepStatus};
use utoipa::openapi::schema::{ArrayBuilder, Object, ObjectBuilder, SchemaType, Type};

/// A string that is one of `E`'s wire names (`unspecified` excepted).
pub fn names_of<E: WireEnum>() -> Object {
    let names: Vec<&'static str> = E::ALL.iter().skip(1).map(|value| value.wire_name()).collect();
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::String))
        .enum_values(Some(names))
        .description(Some(format!("A {}", E::WHAT)))
        .build()
}

fn list_of<E: WireEnum>() -> utoipa::openapi::schema::Array {
    ArrayBuilder::new().items(names_of::<E>()).build()
}

macro_rules! enum_schemas {
    ($($ty:ident => $one:ident, $many:ident;)+) => {
        $(
            pub fn $one() -> Object {
                names_of::<$ty>()
            }

            pub fn $many() -> utoipa::openapi::schema::Array {
                list_of::<$ty>()
            }
        )+
    };
}

enum_schemas! {
    EventType => event_type, event_type_list;
    ExecutionStatus => execution_status, execution_status_list;
    StepStatus => step_status, step_status_list;
    ApprovalStatus => approval_status, approval_status_list;
    AgentStatus => agent_status, agent_status_list;
    LogStream => log_stream, log_stream_list;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_schemas_list_the_wire_names() {
        let schema = serde_json::to_value(execution_status()).expect("json");
        assert_eq!(schema["type"], "string");
        let names = schema["enum"].as_array().expect("enum");
        assert_eq!(names.first().and_then(|v| v.as_str()), Some("pending"));
        assert!(!names.iter().any(|v| v == "unspecified"));
        let list = serde_json::to_value(event_type_list()).expect("json");
        assert_eq!(list["type"], "array");
        assert!(list["items"]["enum"].as_array().is_some_and(|names| names.iter().any(|v| v == "execution.started")));
    }
}
