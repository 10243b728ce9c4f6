// The device stream as the connection sees it, whatever carries it (WebSocket, gRPC over HTTP/2).
import type { ClientFrame, ServerFrame } from "./gen/natter/v1/socket_service_pb.js";

/** How a stream ended: a google.rpc code (0 when it simply ended), natter's reason, a sentence. */
export interface StreamEnd {
  code: number;
  reason: string;
  message: string;
}

export interface StreamHandlers {
  /** The stream can take frames (the connection sends Hello first). */
  open(): void;
  frame(frame: ServerFrame): void;
  /** Called once, however the stream ended (by either side). */
  closed(end: StreamEnd): void;
}

/** One open device stream. */
export interface DeviceStream {
  /** Queues a frame; false once the stream has ended. */
  send(frame: ClientFrame): boolean;
  /** Ends it gracefully: what was sent goes out first, then the server ends the stream. */
  end(): void;
  /** Drops it at once. */
  close(): void;
}

/**
 * Opens device streams: `address` is the socket server a Redirect or Locate named (host:port of
 * its gRPC listener), or undefined for the transport's own server.
 */
export interface StreamTransport {
  open(address: string | undefined, token: string, handlers: StreamHandlers): DeviceStream;
}
