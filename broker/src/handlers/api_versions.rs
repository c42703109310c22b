//! ApiVersions (v0-v4): the served APIs and their version ranges, from the
//! one table in `sluice_protocol::api`. Unsupported ApiVersions versions are
//! answered in v0 by the connection before reaching here.

use sluice_protocol::api::api_versions_response;
use sluice_protocol::kafka_protocol::messages::ApiVersionsResponse;

pub fn handle() -> ApiVersionsResponse {
    api_versions_response(0)
}
