import Glibc
import Synchronization
import Testing

@testable import SluicePageStore

@Suite struct ConcurrencyTests {
    /// 16 clients increment one counter page by read / conditional write / retry: the final value is
    /// the number of acknowledged writes, and their OSNs are distinct.
    @Test func noLostUpdatesUnderSixteenClients() throws {
        let pagesPath = "/var/tmp/sluice-counter-\(getpid()).pages"
        let logPath = "/var/tmp/sluice-counter-\(getpid()).log"
        defer {
            unlink(pagesPath)
            unlink(logPath)
        }
        let node = StorageNode(store: try ObjectStore(pages: PageFileConfiguration(path: pagesPath),
                                                       log: try EmbeddedLog(path: logPath)))
        let clients = 16
        let incrementsEach = 25
        let acknowledged = Mutex<[UInt64]>([])
        let failures = Atomic<Int>(0)
        final class Context: @unchecked Sendable {
            let body: () -> Void
            init(_ body: @escaping () -> Void) { self.body = body }
        }
        var threads: [pthread_t] = []
        for _ in 0..<clients {
            let context = Context {
                for _ in 0..<incrementsEach {
                    do {
                        let (osn, _) = try updatePage(node, objectID: 1, pageIndex: 0, attemptsMax: 1_000) { bytes in
                            var value = bytes.count >= 8 ? bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } : 0
                            value += 1
                            return withUnsafeBytes(of: value) { Array($0) }
                        }
                        acknowledged.withLock { $0.append(osn) }
                    } catch {
                        failures.add(1, ordering: .relaxed)
                    }
                }
            }
            var thread = pthread_t()
            pthread_create(&thread, nil, { raw in
                Unmanaged<Context>.fromOpaque(raw!).takeRetainedValue().body()
                return nil
            }, Unmanaged.passRetained(context).toOpaque())
            threads.append(thread)
        }
        for thread in threads { pthread_join(thread, nil) }
        let osns = acknowledged.withLock { $0 }
        let final = try node.read(objectID: 1, pageIndex: 0)
        let value = final.payload.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        #expect(failures.load(ordering: .relaxed) == 0)
        #expect(osns.count == clients * incrementsEach)
        #expect(value == UInt64(osns.count), "every acknowledged increment is in the final value")
        #expect(Set(osns).count == osns.count, "each write has its own OSN")
        #expect(final.pageOSN == osns.max())
    }
}
