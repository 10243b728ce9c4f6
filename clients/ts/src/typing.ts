// Typing indicators at a pace no server limit trips: a start at most every few seconds per thread, a stop only after a start, all within a small budget.

/** While the person keeps typing, a start is repeated this often (receivers expire one after 6 s). */
export const TYPING_REPEAT_MS = 3000;
/** The budget of typing frames: this many a second on average... */
export const TYPING_PER_SECOND = 1;
/** ...and at most this many at once. The server allows twice both (docs/clients.md). */
export const TYPING_BURST = 3;

/**
 * Decides which typing frames a device sends: `start` and `stop` answer 0 (send now), -1
 * (nothing to send) or a wait in ms when the budget is spent (send then, unless something
 * else happened to the thread meanwhile). A message sent to the thread ends the indicator at the receivers, so
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

  /** A keystroke: 0 (send a start now), -1 (announced recently: nothing to send) or a wait in ms (send it then). */
  start(threadId: number): number {
    const t = this.refill();
    const last = this.started.get(threadId);
    if (last !== undefined && t - last < TYPING_REPEAT_MS) return -1;
    if (this.tokens < 1) return this.wait();
    this.tokens -= 1;
    this.started.set(threadId, t);
    return 0;
  }

  /** The box was cleared: 0 (send a stop now), -1 (no start to stop) or a wait in ms. */
  stop(threadId: number): number {
    if (!this.started.has(threadId)) return -1;
    this.refill();
    if (this.tokens < 1) return this.wait();
    this.tokens -= 1;
    this.started.delete(threadId);
    return 0;
  }

  private wait(): number {
    return Math.ceil(((1 - this.tokens) / this.perSecond) * 1000);
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
