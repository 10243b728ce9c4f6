// @natter/client: natter's TypeScript SDK, transport-agnostic (see ./web and ./node for transports).
export {
  NatterClient,
  NotificationPreview,
  ReportReason,
  withToken,
  type HistoryPage,
  type Services,
  type SettingsChange,
  type WebPushKeys,
} from "./client.js";
export {
  Connection,
  newClientMsgId,
  type ConnectionOptions,
  type ConnectionState,
  type Event,
  type PendingSend,
  type SendExtras,
  type SendTarget,
} from "./connection.js";
export { Fold, foldKey, isEvent, isKnownKind, type View } from "./fold.js";
export { Code, codeName, NatterError } from "./errors.js";
export { grpcStream } from "./grpc.js";
export { TYPING_BURST, TYPING_PER_SECOND, TYPING_REPEAT_MS, TypingPacer } from "./typing.js";
export { Merger, type Gap, type Ordered } from "./merge.js";
export type { DeviceStream, StreamEnd, StreamHandlers, StreamTransport } from "./stream.js";
export { endOfClose, PROTOCOL, socketUrl, TOKEN_PREFIX, webSocketStream, type WebSocketLike } from "./websocket.js";
export * as v1 from "./v1.js";
export { upload, type UploadInfo, type UploadOptions } from "./media.js";
