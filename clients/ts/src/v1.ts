// The contracts as generated TypeScript (protobuf-es): messages, enums, schemas and services.
export * from "./gen/natter/v1/types_pb.js";
export * from "./gen/natter/v1/account_service_pb.js";
export * from "./gen/natter/v1/contact_service_pb.js";
export * from "./gen/natter/v1/group_service_pb.js";
export * from "./gen/natter/v1/presence_service_pb.js";
export * from "./gen/natter/v1/socket_service_pb.js";
export * from "./gen/natter/v1/thread_service_pb.js";
