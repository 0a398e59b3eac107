// Path: Sources/SluiceGateway/OrderedReplies.swift — what both servers keep per connection: requests
// taken in order under a bound on outstanding requests and the server's byte budget, replies written
// in request order, reading paused while the connection is full.
import NIOCore

/// One connection's request/reply order, for `IntermediateHandler` and `ApplianceHandler`. Event loop
/// only. A request is outstanding from the moment it is handled until its reply's write completed; at
/// `outstandingMax` (or while a request waits for budget in `starts`) frames wait in the inbox and
/// reading pauses (TCP pushes back). `handle` gets each frame with its sequence number and must
/// eventually `complete` that sequence exactly once; replies ready early wait for the ones before.
final class OrderedReplies {
    let outstandingMax: Int
    let budget: RequestBudget
    /// Requests admitted under the budget, started in arrival order (`BudgetedStarts`).
    private(set) var starts: BudgetedStarts!
    /// Called for each frame taken from the inbox, with its sequence (already counted outstanding).
    var handle: ((GatewayInboundFrame, UInt64, Channel) -> Void)!
    /// Called with each reply's bytes as it is written.
    var onWrite: ((Int) -> Void)?
    /// Requests handled and not yet answered (their reply's write not completed).
    private(set) var outstanding = 0
    /// Set by `closeAfterReplies`: nothing more is taken from the connection.
    private(set) var closing = false
    private var nextSequence: UInt64 = 0
    private var nextToSend: UInt64 = 0
    /// Replies ready before an earlier one (at most `outstandingMax`).
    private var ready: [UInt64: (buffer: ByteBuffer, closeAfter: Bool)] = [:]
    private var readingPaused = false
    /// Frames decoded and not yet handled: a socket read may hold many after reading paused, they wait
    /// here (bounded by one read's bytes) so no more than `outstandingMax` are ever outstanding.
    private var inbox = CircularBuffer<GatewayInboundFrame>()
    private var processing = false

    init(outstandingMax: Int, budget: RequestBudget) {
        precondition(outstandingMax > 0, "a connection takes a request")
        self.outstandingMax = outstandingMax
        self.budget = budget
        starts = BudgetedStarts(budget: budget) { [unowned self] channel in self.process(channel) }
    }

    /// A decoded frame: queued, then handled if the connection has room.
    func receive(_ frame: GatewayInboundFrame, _ channel: Channel) {
        guard !closing else { return }
        inbox.append(frame)
        process(channel)
    }

    /// Takes nothing more after the requests already handled (an oversized frame: its reply closes).
    func closeAfterReplies() { closing = true }

    /// Handles queued frames while the connection has room (outstanding below the bound, no request
    /// waiting for budget), then pauses or resumes reading. Not reentrant: a reply written at once
    /// calls it back, and the outer call's loop goes on instead (no recursion per frame).
    func process(_ channel: Channel) {
        guard !processing else { return }
        processing = true
        defer { processing = false }
        while !closing, !starts.isWaiting, outstanding < outstandingMax, let frame = inbox.popFirst() {
            let sequence = nextSequence
            nextSequence += 1
            outstanding += 1
            budget.noteOutstanding(outstanding)
            handle(frame, sequence, channel)
        }
        if closing { inbox.removeAll() }
        updateReading(channel)
    }

    /// The reply of request `sequence`: written now if every earlier one was, else when they are.
    /// `closeAfter` closes the connection once it is written.
    func complete(_ sequence: UInt64, _ buffer: ByteBuffer, closeAfter: Bool, _ channel: Channel) {
        precondition(sequence >= nextToSend && ready[sequence] == nil, "each request is answered once")
        ready[sequence] = (buffer, closeAfter)
        while let next = ready.removeValue(forKey: nextToSend) {
            let written = nextToSend
            nextToSend += 1
            onWrite?(next.buffer.readableBytes)
            let bound = NIOLoopBound(self, eventLoop: channel.eventLoop)
            let closeAfter = next.closeAfter
            channel.writeAndFlush(next.buffer).whenComplete { result in
                let replies = bound.value
                replies.outstanding -= 1
                precondition(replies.outstanding >= 0, "each reply is taken once")
                replies.starts.finished(written)
                if closeAfter { channel.close(promise: nil) }
                if case .failure = result { channel.close(promise: nil) }
                replies.process(channel)
            }
        }
    }

    func updateReading(_ channel: Channel) {
        // Not paused while closing: the decoder discards what follows an oversized frame, so the close
        // after its reply is an orderly FIN, not a reset that could lose that reply at the client.
        let full = outstanding >= outstandingMax || starts.isWaiting || (!inbox.isEmpty && !closing)
        if full != readingPaused {
            readingPaused = full
            channel.setOption(ChannelOptions.autoRead, value: !full).whenComplete { _ in }
        }
    }

    /// The connection ended: requests waiting for budget and queued frames are dropped.
    func dropPending() {
        starts.dropWaiting()
        inbox.removeAll()
    }
}
