// Typed unary clients over the server's Connect gateway (POST /natter.v1.X/Method).
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { AccountService } from "./gen/natter/v1/account_service_pb";
import { ContactService } from "./gen/natter/v1/contact_service_pb";
import { GroupService } from "./gen/natter/v1/group_service_pb";
import { PresenceService } from "./gen/natter/v1/presence_service_pb";
import { ThreadService } from "./gen/natter/v1/thread_service_pb";

export interface Api {
  accounts: Client<typeof AccountService>;
  contacts: Client<typeof ContactService>;
  threads: Client<typeof ThreadService>;
  groups: Client<typeof GroupService>;
  presence: Client<typeof PresenceService>;
}

export function makeApi(baseUrl: string, token: () => string): Api {
  const auth: Interceptor = (next) => async (req) => {
    const t = token();
    if (t) req.header.set("Authorization", `Bearer ${t}`);
    return next(req);
  };
  const transport = createConnectTransport({
    baseUrl,
    useBinaryFormat: true,
    interceptors: [auth],
    defaultTimeoutMs: 15000,
  });
  return {
    accounts: createClient(AccountService, transport),
    contacts: createClient(ContactService, transport),
    threads: createClient(ThreadService, transport),
    groups: createClient(GroupService, transport),
    presence: createClient(PresenceService, transport),
  };
}

export function isUnauthenticated(e: unknown): boolean {
  return e instanceof ConnectError && e.code === Code.Unauthenticated;
}

export function isUnimplemented(e: unknown): boolean {
  return e instanceof ConnectError && e.code === Code.Unimplemented;
}

/** A sentence for people: the server's message without the "[code]" prefix. */
export function problem(e: unknown): string {
  if (e instanceof ConnectError) {
    if (e.code === Code.Unavailable || e.code === Code.Unknown || e.code === Code.Canceled) {
      return "The server cannot be reached right now. Try again when you are online.";
    }
    return e.rawMessage || e.message;
  }
  if (e instanceof Error) return e.message;
  return String(e);
}
