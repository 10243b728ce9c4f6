// The device stream as a native gRPC bidirectional stream, through a Connect transport (HTTP/2).
import { createClient, type Transport } from "@connectrpc/connect";
import { Code, NatterError } from "./errors.js";
import { SocketService, type ClientFrame } from "./gen/natter/v1/socket_service_pb.js";
import type { DeviceStream, StreamHandlers, StreamTransport } from "./stream.js";

/** An async iterable that frames are pushed into; ending it half-closes the stream. */
class Outgoing implements AsyncIterable<ClientFrame> {
  private items: ClientFrame[] = [];
  private wake: (() => void) | null = null;
  done = false;

  push(f: ClientFrame): void {
    this.items.push(f);
    this.wake?.();
  }

  end(): void {
    this.done = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ClientFrame> {
    for (;;) {
      while (this.items.length) yield this.items.shift()!;
      if (this.done) return;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = null;
    }
  }
}

/**
 * Device streams over gRPC: `transportFor(address)` gives the transport to a socket server (its
 * gRPC listener), or to the default server when address is undefined; see `@natter/client/node`.
 */
export function grpcStream(transportFor: (address: string | undefined) => Transport): StreamTransport {
  return {
    open(address: string | undefined, token: string, h: StreamHandlers): DeviceStream {
      const client = createClient(SocketService, transportFor(address));
      const out = new Outgoing();
      const abort = new AbortController();
      let ended = false;
      const finish = (code: number, reason: string, message: string) => {
        if (ended) return;
        ended = true;
        out.end();
        h.closed({ code, reason, message });
      };
      void (async () => {
        try {
          const frames = client.connect(out, { headers: { authorization: `Bearer ${token}` }, signal: abort.signal });
          queueMicrotask(() => h.open());
          for await (const f of frames) {
            if (ended) break;
            h.frame(f);
          }
          finish(Code.OK, "", "stream ended");
        } catch (e) {
          const err = NatterError.from(e);
          finish(err.code, err.reason, err.message);
        }
      })();
      return {
        send(frame: ClientFrame): boolean {
          if (ended || out.done) return false;
          out.push(frame);
          return true;
        },
        end: () => out.end(),
        close() {
          abort.abort();
          finish(Code.UNAVAILABLE, "DROPPED", "the stream was dropped");
        },
      };
    },
  };
}
