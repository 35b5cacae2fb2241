// Types for @resound/recovery. Structural on purpose: the package depends on
// neither pusher-js nor laravel-echo, and any Pusher or Echo instance fits.

/** The channel event emitted when a channel's resume failed: the app must refetch. */
export declare const REFETCH_EVENT: 'resound:refetch';

/** The channel event emitted when a channel resumed: what it missed has been delivered. */
export declare const RESUMED_EVENT: 'resound:resumed';

/** Data of the `resound:refetch` channel event. */
export interface RefetchEvent {
  /**
   * Why the server could not resume the channel: "expired" (the position is
   * older than its history window, or unknown) or "too_many" (more was
   * missed than the server sends one client at once). Either way: refetch.
   */
  reason: string;
}

/** Data of the `resound:resumed` channel event. */
export interface ResumedEvent {
  /** How many events the server replayed before it said so. */
  replayed: number;
}

export interface RecoveryOptions {
  /**
   * A channel could not be resumed (the client was away longer than the
   * server's history window): load the channel's state again. The
   * channel's position is forgotten already; later events set it again.
   */
  onRefetch?: (channel: string, info: RefetchEvent) => void;
  /**
   * A channel was resumed: the `replayed` events it missed have been
   * delivered to its listeners, in order, before this call.
   */
  onResumed?: (channel: string, replayed: number) => void;
}

export interface RecoveryHandle {
  /** The last position seen per channel (a copy). Positions are opaque strings. */
  positions(): Record<string, string>;
  /** The last position seen on one channel, if any. */
  position(channel: string): string | undefined;
  /** Forgets one channel's position, or every channel's: the next resubscription starts afresh. */
  forget(channel?: string): void;
  /** Removes the plugin from the Pusher instance (its methods are put back). */
  stop(): void;
}

/** What the plugin needs of a pusher-js `Pusher` instance. */
export interface PusherLike {
  connection: {
    state: string;
    bind(event: string, callback: (...args: any[]) => void): unknown;
    unbind(event?: string, callback?: (...args: any[]) => void): unknown;
  };
  channel(name: string): any;
  send_event(event: string, data: any, channel?: string): boolean;
  unsubscribe(name: string): void;
}

/** What the plugin needs of a laravel-echo `Echo` instance (broadcaster 'reverb' or 'pusher'). */
export interface EchoLike {
  connector: { pusher: PusherLike };
}

/**
 * Adds channel recovery to a pusher-js `Pusher`, or to the Pusher of a
 * laravel-echo `Echo`, without changing their API.
 */
export declare function withRecovery(target: PusherLike | EchoLike, options?: RecoveryOptions): RecoveryHandle;
