// Typing indicators at a pace no server limit trips: a start at most every few seconds per thread, a stop only after a start, all within a small budget.

/** While the person keeps typing, a start is repeated this often (receivers expire one after 6 s). */
export const TYPING_REPEAT_MS = 3000;
/** The budget of typing frames: this many a second on average... */
export const TYPING_PER_SECOND = 1;
/** ...and at most this many at once. The server allows twice both (docs/clients.md). */
export const TYPING_BURST = 3;

/**
 * Decides which typing frames a device sends. `start` is true when a start may go out now;
 * `stop` answers 0 (send now), a wait in ms (send then, unless a start came meanwhile) or -1
 * (nothing to stop). A message sent to the thread ends the indicator at the receivers, so
 * `sent` forgets the start without a stop frame.
 */
export class TypingPacer {
  private tokens: number;
  private at: number;
  private readonly started = new Map<number, number>();

  constructor(
    private readonly now: () => number = () => Date.now(),
    private readonly perSecond = TYPING_PER_SECOND,
    private readonly burst = TYPING_BURST,
  ) {
    this.tokens = burst;
    this.at = now();
  }

  private refill(): number {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.at) / 1000) * this.perSecond);
    this.at = t;
    return t;
  }

  start(threadId: number): boolean {
    const t = this.refill();
    const last = this.started.get(threadId);
    if (last !== undefined && t - last < TYPING_REPEAT_MS) return false;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    this.started.set(threadId, t);
    return true;
  }

  stop(threadId: number): number {
    if (!this.started.has(threadId)) return -1;
    this.refill();
    if (this.tokens < 1) return Math.ceil(((1 - this.tokens) / this.perSecond) * 1000);
    this.tokens -= 1;
    this.started.delete(threadId);
    return 0;
  }

  /** A message went to the thread: its receivers drop the indicator by themselves. */
  sent(threadId: number): void {
    this.started.delete(threadId);
  }

  /** The stream was lost: the server forgot every indicator. */
  reset(): void {
    this.started.clear();
  }
}
