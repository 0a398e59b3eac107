// Path: Sources/SluiceCore/System/PinnedThreads.swift — set-up work run at once on the cores that
// will use what it makes.
import Glibc

extension CPU {
    /// Runs `body(i)` for every index of `cores` at once, each on a thread of its own pinned to
    /// `cores[i]` (unpinned when pinning fails), and returns the results in order when all are done.
    /// For set-up that touches memory the thread on that core will use (a pool's pages fault in on
    /// its NUMA node) and runs the set-ups together instead of one after another. Control plane: blocks the
    /// caller until every body returns; a body whose thread cannot start runs on the caller's thread.
    /// A body must not start threads or async work: they would inherit its one-core affinity.
    public static func runPinned<T: Sendable>(on cores: [Int], _ body: @escaping @Sendable (Int) -> T) -> [T] {
        let slots = UnsafeMutableBufferPointer<T?>.allocate(capacity: cores.count)
        slots.initialize(repeating: nil)
        defer {
            _ = slots.deinitialize()
            slots.deallocate()
        }
        let base = UInt(bitPattern: slots.baseAddress)  // each thread writes only its own slot
        var threads: [pthread_t] = []
        for (index, core) in cores.enumerated() {
            let run = PinnedStart {
                try? CPU.pinCurrentThread(to: core)
                UnsafeMutablePointer<T?>(bitPattern: base)!.advanced(by: index).pointee = body(index)
            }
            var thread = pthread_t()
            let retained = Unmanaged.passRetained(run).toOpaque()
            let rc = pthread_create(&thread, nil, { raw in
                Unmanaged<PinnedStart>.fromOpaque(raw!).takeRetainedValue().body()
                return nil
            }, retained)
            if rc == 0 {
                threads.append(thread)
            } else {
                Unmanaged<PinnedStart>.fromOpaque(retained).release()
                slots[index] = body(index)
            }
        }
        for thread in threads { pthread_join(thread, nil) }
        return slots.map { slot in
            guard let result = slot else { preconditionFailure("a pinned run ended without its result") }
            return result
        }
    }
}

/// A pinned thread's work (the thread owns it until it ends).
private final class PinnedStart: @unchecked Sendable {  // unchecked: handed to one thread, never shared
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}
