// The SQLSTATE codes the proxy itself reports (PostgreSQL's errcodes.txt names in comments).
#pragma once

#include <string_view>

namespace pgwire_proxy::sqlstate {

inline constexpr std::string_view kConnectionFailure = "08006";        // connection_failure
inline constexpr std::string_view kProtocolViolation = "08P01";        // protocol_violation
inline constexpr std::string_view kFeatureNotSupported = "0A000";      // feature_not_supported
inline constexpr std::string_view kInvalidAuthorization = "28000";     // invalid_authorization_specification
inline constexpr std::string_view kInvalidPassword = "28P01";          // invalid_password
inline constexpr std::string_view kInvalidCatalogName = "3D000";       // invalid_catalog_name
inline constexpr std::string_view kTooManyConnections = "53300";       // too_many_connections
inline constexpr std::string_view kProgramLimitExceeded = "54000";     // program_limit_exceeded
inline constexpr std::string_view kQueryCanceled = "57014";            // query_canceled
inline constexpr std::string_view kAdminShutdown = "57P01";            // admin_shutdown
inline constexpr std::string_view kInsufficientPrivilege = "42501";    // insufficient_privilege
inline constexpr std::string_view kInternalError = "XX000";            // internal_error

}  // namespace pgwire_proxy::sqlstate
