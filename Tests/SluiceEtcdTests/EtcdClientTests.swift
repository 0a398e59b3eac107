// The etcd client against real etcd (1- and 3-member clusters of /usr/bin/etcd started per test).
import Foundation
import SluiceEtcdTestSupport
import Testing

@testable import SluiceEtcd

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// A client for `cluster` with `timeoutMs` per call, shut down after `body`.
private func withClient<Result>(
    _ cluster: EtcdCluster, timeoutMs: Int64 = 3_000, connectTimeoutMs: Int64 = EtcdLimits.connectTimeoutMsDefault,
    _ body: (EtcdClient) async throws -> Result
) async throws -> Result {
    let configuration = EtcdClientConfiguration(
        endpoints: cluster.clientURLs, callTimeoutMs: timeoutMs, connectTimeoutMs: connectTimeoutMs)
    return try await EtcdClient.with(configuration, body)
}

@Suite(.serialized, .timeLimit(.minutes(1)),
       .enabled(if: etcdTestsEnabled, "etcd not installed (/usr/bin/etcd); `make deps` installs it"))
struct EtcdClientTests {
    @Test func putGetDeleteRoundTripBinaryKeysAndValues() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            try await withClient(cluster) { client in
                // Every byte value in keys and values, NUL and 0xff among them, goes through intact.
                let keys: [[UInt8]] = [[0x00], [0xff, 0x00, 0x01], Array(0...255), bytes("plain/key")]
                for (index, key) in keys.enumerated() {
                    let value = Array(repeating: UInt8(index), count: 3) + Array((0...255).reversed())
                    let put = try await client.put(key, value)
                    let read = try #require(try await client.get(key))
                    #expect(read.key == key)
                    #expect(read.value == value)
                    #expect(read.modRevision == put.revision)
                    #expect(read.version == 1)
                }
                let overwrite = try await client.put(keys[0], [1, 2, 3], previous: true)
                #expect(overwrite.previous?.value.count == 3 + 256)
                #expect(try await client.get(keys[0])?.version == 2)
                let deleted = try await client.delete(.key(keys[1]), previous: true)
                #expect(deleted.deleted == 1)
                #expect(deleted.previous.first?.key == keys[1])
                #expect(try await client.get(keys[1]) == nil)
                #expect(try await client.delete(.key(keys[1])).deleted == 0)
                #expect(try await client.get(bytes("absent")) == nil)
            }
        }
    }

    @Test func rangeWithPrefixAndLimit() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            try await withClient(cluster) { client in
                for index in 0..<10 { _ = try await client.put(bytes("log/\(index)"), bytes("v\(index)")) }
                _ = try await client.put(bytes("log0"), bytes("outside: no slash"))
                _ = try await client.put(bytes("lof"), bytes("outside: before"))
                // A prefix ending in 0xff: the range end carries into the byte before it.
                _ = try await client.put([0x01, 0xff, 0x05], [1])
                _ = try await client.put([0x02], [2])

                let all = try await client.range(.prefix(bytes("log/")))
                #expect(all.kvs.map(\.key) == (0..<10).map { bytes("log/\($0)") })
                #expect(all.count == 10)
                #expect(!all.more)
                let limited = try await client.range(.prefix(bytes("log/")), limit: 3)
                #expect(limited.kvs.map(\.key) == (0..<3).map { bytes("log/\($0)") })
                #expect(limited.more)
                #expect(limited.count == 10)
                #expect(try await client.range(.prefix([0x01, 0xff])).kvs.map(\.key) == [[0x01, 0xff, 0x05]])
                let between = try await client.range(.range(start: bytes("log/2"), end: bytes("log/5")))
                #expect(between.kvs.map(\.value) == [bytes("v2"), bytes("v3"), bytes("v4")])
                // An older revision still reads what was there then.
                let first = try #require(all.kvs.first)
                _ = try await client.put(first.key, bytes("newer"))
                let old = try await client.range(.key(first.key), revision: first.modRevision)
                #expect(old.kvs.first?.value == bytes("v0"))
                await #expect(throws: EtcdError.self) { try await client.range(.prefix(bytes("log/")), limit: -1) }
            }
        }
    }

    @Test func putIfAbsentRaceHasExactlyOneWinnerPerKey() async throws {
        let taskCount = 16
        let keyCount = 8
        try await withEtcdCluster(members: 1) { cluster in
            try await withClient(cluster) { client in
                // Every task tries every key, in a different order; the txn's compare create_revision == 0
                // lets only the first put of each key through.
                let wins = try await withThrowingTaskGroup(of: [Int].self) { group in
                    for task in 0..<taskCount {
                        group.addTask {
                            var won: [Int] = []
                            for step in 0..<keyCount {
                                let key = (step + task) % keyCount
                                if try await client.putIfAbsent(bytes("next/\(key)"), bytes("task \(task)")) {
                                    won.append(key)
                                }
                            }
                            return won.map { $0 * taskCount + task }
                        }
                    }
                    var all: [Int] = []
                    for try await won in group { all += won }
                    return all
                }
                #expect(wins.count == keyCount)
                for key in 0..<keyCount {
                    let winners = wins.filter { $0 / taskCount == key }.map { $0 % taskCount }
                    #expect(winners.count == 1, "key \(key) won by tasks \(winners)")
                    let stored = try #require(try await client.get(bytes("next/\(key)")))
                    #expect(stored.value == bytes("task \(winners.first ?? -1)"))
                    #expect(stored.version == 1)
                }
            }
        }
    }

    @Test func txnComparesAndBranches() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            try await withClient(cluster) { client in
                let key = bytes("k")
                let put = try await client.put(key, bytes("one"))
                // The failure branch runs, and its get answers in the txn's results.
                let miss = try await client.txn(
                    compare: [EtcdCompare(key: key, .value(bytes("two")))],
                    success: [.put(key: key, value: bytes("never"))], failure: [.get(.key(key))])
                #expect(!miss.succeeded)
                guard case .get(let range) = miss.results.first else { Issue.record("no get result"); return }
                #expect(range.kvs.first?.value == bytes("one"))
                // Every compare target holds: success puts one key and deletes another.
                _ = try await client.put(bytes("gone"), [0])
                let hit = try await client.txn(
                    compare: [EtcdCompare(key: key, .value(bytes("one"))), EtcdCompare(key: key, .version(1)),
                              EtcdCompare(key: key, .modRevision(put.revision)),
                              EtcdCompare(key: key, .createRevision(put.revision)),
                              EtcdCompare(key: key, .modRevision(put.revision + 1), .less)],
                    success: [.put(key: key, value: bytes("two")), .delete(.key(bytes("gone")))])
                #expect(hit.succeeded)
                #expect(hit.results.count == 2)
                guard case .delete(let deleted) = hit.results.last else { Issue.record("no delete result"); return }
                #expect(deleted.deleted == 1)
                #expect(try await client.get(key)?.value == bytes("two"))
                #expect(try await client.get(bytes("gone")) == nil)
            }
        }
    }

    @Test func watchFromRevisionSeesEveryEventInOrder() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            try await withClient(cluster) { client in
                let before = try await client.put(bytes("other"), [0]).revision
                var expected: [(EtcdWatchEvent.Kind, [UInt8], Int64)] = []
                for index in 0..<20 {
                    let key = bytes("w/\(index % 4)")
                    if index % 5 == 4 {
                        expected.append((.delete, key, try await client.delete(.key(key)).revision))
                    } else {
                        expected.append((.put, key, try await client.put(key, bytes("\(index)")).revision))
                    }
                    _ = try await client.put(bytes("outside/\(index)"), [1])  // not under the prefix
                }
                let watch = try await client.watch(.prefix(bytes("w/")), fromRevision: before + 1)
                // Events after the watch was created arrive after the history, in order.
                for index in 20..<30 {
                    let key = bytes("w/\(index % 4)")
                    expected.append((.put, key, try await client.put(key, bytes("\(index)")).revision))
                }
                var seen: [(EtcdWatchEvent.Kind, [UInt8], Int64)] = []
                for try await event in watch {
                    seen.append((event.kind, event.kv.key, event.kv.modRevision))
                    if seen.count == expected.count { break }
                }
                watch.cancel()
                #expect(seen.map(\.0) == expected.map(\.0))
                #expect(seen.map(\.1) == expected.map(\.1))
                #expect(seen.map(\.2) == expected.map(\.2))
            }
        }
    }

    @Test func watchAndRangeBelowCompactionFailTyped() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            try await withClient(cluster) { client in
                let first = try await client.put(bytes("c"), [1]).revision
                let last = try await client.put(bytes("c"), [2]).revision
                _ = try await client.put(bytes("c"), [3])
                try await client.compact(revision: last)

                let watch = try await client.watch(.key(bytes("c")), fromRevision: first)
                do {
                    for try await event in watch { Issue.record("event below the compaction: \(event)") }
                    Issue.record("watch below the compaction revision ended without an error")
                } catch let error as EtcdError {
                    guard case .compacted(let requested, let compact) = error else {
                        Issue.record("expected compacted, got \(error)")
                        return
                    }
                    #expect(requested == first)
                    #expect(compact == last)
                }
                do {
                    _ = try await client.range(.key(bytes("c")), revision: first)
                    Issue.record("range below the compaction revision succeeded")
                } catch let error as EtcdError {
                    guard case .compacted(let requested, let compact) = error else {
                        Issue.record("expected compacted, got \(error)")
                        return
                    }
                    #expect(requested == first)
                    #expect(compact == nil)  // etcd's range error does not say the compaction revision
                }
                // At the compaction revision and after, both still work.
                let kept = try await client.range(.key(bytes("c")), revision: last)
                #expect(kept.kvs.first?.value == [2])
                let live = try await client.watch(.key(bytes("c")), fromRevision: last)
                var iterator = live.makeAsyncIterator()
                #expect(try await iterator.next()?.kv.value == [2])
                live.cancel()
            }
        }
    }

    @Test func leaseExpiryAndRevokeRemoveAttachedKeys() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            try await withClient(cluster) { client in
                let long = try await client.grantLease(ttlSeconds: 30)
                _ = try await client.put(bytes("lease/long"), [2], lease: long.id)
                let short = try await client.grantLease(ttlSeconds: 1)
                #expect(short.ttlSeconds >= 1)
                _ = try await client.put(bytes("lease/short"), [1], lease: short.id)
                #expect(try await client.get(bytes("lease/short"))?.lease == short.id)
                #expect(try await client.keepAlive(lease: short.id) >= 1)

                // Expiry: the key goes within a few seconds of the last keep-alive, and not at once
                // (the bound below the 1 s TTL leaves room for a slow answer to the keep-alive).
                let start = ContinuousClock.now
                while try await client.get(bytes("lease/short")) != nil {
                    #expect(ContinuousClock.now - start < .seconds(6), "key outlived its 1 s lease")
                    if ContinuousClock.now - start >= .seconds(6) { break }
                    try await Task.sleep(for: .milliseconds(100))
                }
                #expect(ContinuousClock.now - start >= .milliseconds(600))
                await #expect(throws: EtcdError.self) { try await client.keepAlive(lease: short.id) }
                do {
                    _ = try await client.put(bytes("lease/late"), [3], lease: short.id)
                    Issue.record("put on an expired lease succeeded")
                } catch let error as EtcdError {
                    guard case .leaseNotFound(let id) = error else { Issue.record("expected leaseNotFound, got \(error)"); return }
                    #expect(id == short.id)
                }

                // Revoke: the key goes at once.
                #expect(try await client.get(bytes("lease/long")) != nil)
                try await client.revokeLease(long.id)
                #expect(try await client.get(bytes("lease/long")) == nil)
            }
        }
    }

    @Test func clientFailsOverWhenAMemberIsKilled() async throws {
        try await withEtcdCluster(members: 3) { cluster in
            try await withClient(cluster) { client in
                let before = try await client.status()
                #expect(before.endpoint == cluster.clientURLs[0])
                let firstPut = try await client.put(bytes("f"), [1])
                let watch = try await client.watch(.key(bytes("f")), fromRevision: firstPut.revision)
                var events = watch.makeAsyncIterator()
                #expect(try await events.next()?.kv.value == [1])
                // kill -9 the member the client talks to; the leader, when it is that one.
                cluster.kill(member: 0)
                // Its watch ends with a typed error instead of hanging; watching again from the next
                // revision goes to another member.
                do {
                    while let event = try await events.next() { Issue.record("event from a killed member: \(event)") }
                    Issue.record("watch on a killed member ended without an error")
                } catch let error as EtcdError {
                    guard case .connectionLost(.watch, outcomeUnknown: false, _) = error else {
                        Issue.record("expected connectionLost(watch), got \(error)")
                        return
                    }
                }
                let rewatch = try await client.watch(.key(bytes("f")), fromRevision: firstPut.revision + 1)
                defer { rewatch.cancel() }
                let after = try await client.status()
                #expect(after.endpoint != cluster.clientURLs[0])
                #expect(after.memberID != before.memberID)
                // Writes need a leader. Once the survivors have one (election timeout 500 ms), a put goes
                // through; until then etcd holds it or answers an error (unavailable, or no answer before the
                // deadline: an unknown outcome, which the last read below settles). The connection itself
                // must never be the problem: no unreachable, no connection lost.
                let deadline = ContinuousClock.now + .seconds(10)
                var leader = after.leaderID
                while (leader == 0 || leader == before.memberID) && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(100))
                    leader = try await client.status().leaderID
                }
                #expect(leader != 0 && leader != before.memberID, "no new leader in 10 s")
                var written = false
                while !written && ContinuousClock.now < deadline {
                    do {
                        _ = try await client.put(bytes("f"), [2])
                        written = true
                    } catch let error as EtcdError {
                        switch error {
                        case .status, .timedOut(.put, outcomeUnknown: true):
                            try await Task.sleep(for: .milliseconds(100))
                        default:
                            Issue.record("put after fail-over: \(error)")
                            return
                        }
                    }
                }
                #expect(written)
                #expect(try await client.get(bytes("f"))?.value == [2])
                var rewatched = rewatch.makeAsyncIterator()
                #expect(try await rewatched.next()?.kv.value == [2])

                // A hung member (SIGSTOP: it accepts connections, answers nothing): the call to it times
                // out, and the next call starts at the last member. Status and serializable reads need
                // no quorum, which one member of three does not have.
                let hung = try #require(cluster.clientURLs.firstIndex(of: try await client.status().endpoint))
                cluster.pause(member: hung)
                defer { cluster.resume(member: hung) }
                do {
                    _ = try await client.status(timeoutMs: 300)
                    Issue.record("status from a stopped member")
                } catch let error as EtcdError {
                    guard case .timedOut(.status, outcomeUnknown: false) = error else {
                        Issue.record("expected timedOut(status), got \(error)")
                        return
                    }
                }
                let last = try await client.status(timeoutMs: 1_000)
                #expect(last.endpoint != cluster.clientURLs[hung])
                #expect(last.endpoint != cluster.clientURLs[0])
                let served = try await client.range(.key(bytes("f")), serializable: true, timeoutMs: 1_000)
                #expect(served.kvs.first?.value == [2])
            }
        }
    }

    @Test func callAgainstStoppedEtcdIsUnreachable() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            // A long connect timeout: a refused connection must fail the call at once all the same,
            // not be retried until the connect timeout or the deadline passes.
            try await withClient(cluster, timeoutMs: 5_000, connectTimeoutMs: 4_000) { client in
                _ = try await client.put(bytes("u"), [1])
                cluster.kill(member: 0)
                for attempt in 0..<2 {  // a fresh connection and, before it, the pooled one that broke
                    let start = ContinuousClock.now
                    defer { #expect(ContinuousClock.now - start < .seconds(1), "unreachable only after \(ContinuousClock.now - start)") }
                    do {
                        _ = try await client.get(bytes("u"))
                        Issue.record("get against a killed etcd succeeded (attempt \(attempt))")
                    } catch let error as EtcdError {
                        guard case .unreachable(let endpoints, let underlying) = error else {
                            Issue.record("expected unreachable, got \(error)")
                            return
                        }
                        #expect(endpoints == cluster.clientURLs)
                        #expect(underlying.count == 1)
                        #expect(!error.outcomeUnknown)
                    }
                }
                do {
                    _ = try await client.put(bytes("u"), [2])
                    Issue.record("put against a killed etcd succeeded")
                } catch let error as EtcdError {
                    guard case .unreachable = error else { Issue.record("expected unreachable, got \(error)"); return }
                    #expect(!error.outcomeUnknown)
                }
            }
        }
    }

    @Test func deadlineShorterThanABlockedCallTimesOut() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            try await withClient(cluster, timeoutMs: 300) { client in
                _ = try await client.put(bytes("t"), [1])
                cluster.pause(member: 0)
                defer { cluster.resume(member: 0) }
                let start = ContinuousClock.now
                do {
                    _ = try await client.put(bytes("t"), [2])
                    Issue.record("put against a stopped etcd succeeded")
                } catch let error as EtcdError {
                    guard case .timedOut(.put, outcomeUnknown: true) = error else {
                        Issue.record("expected timedOut(put, outcomeUnknown: true), got \(error)")
                        return
                    }
                    #expect(error.outcomeUnknown)
                }
                #expect(ContinuousClock.now - start < .seconds(2))
                do {
                    _ = try await client.get(bytes("t"))
                    Issue.record("get against a stopped etcd succeeded")
                } catch let error as EtcdError {
                    // A read that timed out changed nothing.
                    guard case .timedOut(.range, outcomeUnknown: false) = error else {
                        Issue.record("expected timedOut(range, outcomeUnknown: false), got \(error)")
                        return
                    }
                }
                // Cancelling the calling task is like a timeout: a put's outcome is unknown.
                let cancelled = Task { () async -> EtcdError? in
                    do {
                        _ = try await client.put(bytes("t"), [3], timeoutMs: 10_000)
                        return nil
                    } catch let error as EtcdError {
                        return error
                    } catch {
                        return nil
                    }
                }
                try await Task.sleep(for: .milliseconds(100))
                cancelled.cancel()
                let cancelError = await cancelled.value
                guard case .cancelled(.put, outcomeUnknown: true)? = cancelError else {
                    Issue.record("expected cancelled(put, outcomeUnknown: true), got \(String(describing: cancelError))")
                    return
                }
                cluster.resume(member: 0)
                // The put that timed out was sent; whether it applied is read back, never guessed.
                let settled = try await client.get(bytes("t"), timeoutMs: 3_000)
                #expect(settled?.value == [1] || settled?.value == [2] || settled?.value == [3])
            }
        }
    }

    @Test func responseLargerThanTheBoundIsTypedNotBuffered() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            try await withClient(cluster) { client in
                // 9 values of 1 MiB (each under etcd's 1.5 MiB request limit) come back as one range
                // response of over 9 MiB: above `responseBytesMax`.
                let value = [UInt8](repeating: 0xa5, count: 1 << 20)
                var first: Int64 = 0
                for index in 0..<9 {
                    let put = try await client.put(bytes("big/\(index)"), value)
                    if index == 0 { first = put.revision }
                }
                do {
                    _ = try await client.range(.prefix(bytes("big/")))
                    Issue.record("a range over \(EtcdLimits.responseBytesMax) bytes was read")
                } catch let error as EtcdError {
                    guard case .responseTooLarge(.range, let limit) = error else {
                        Issue.record("expected responseTooLarge, got \(error)")
                        return
                    }
                    #expect(limit == EtcdLimits.responseBytesMax)
                }
                // Under the bound, the same keys read fine.
                let part = try await client.range(.prefix(bytes("big/")), limit: 2)
                #expect(part.kvs.map(\.value) == [value, value])
                #expect(part.more)
                // A watch from the first of them: etcd would send the history as one message of over
                // 9 MiB (up to 1000 revisions per message); the watch asks for fragments, so it comes in
                // pieces under etcd's request bound, each under the client's message bound, in order.
                let watch = try await client.watch(.prefix(bytes("big/")), fromRevision: first)
                var seen: [String] = []
                for try await event in watch {
                    #expect(event.kv.value == value)
                    seen.append(String(decoding: event.kv.key, as: UTF8.self))
                    if seen.count == 9 { break }
                }
                watch.cancel()
                #expect(seen == (0..<9).map { "big/\($0)" })
            }
        }
    }

    /// A consumer that reads nothing holds the reader back at the buffer's bound; nothing is dropped,
    /// the watch stays open, and every event then arrives in order.
    @Test func watchConsumerFallingBehindHoldsTheReaderBack() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            try await withClient(cluster) { client in
                // More events than a watch buffers, 100 puts per txn (etcd allows 128 ops per txn).
                let perTxn = 100
                let txnCount = EtcdLimits.watchEventsBufferedMax / perTxn + 2
                var first: Int64 = 0
                for txn in 0..<txnCount {
                    let ops: [EtcdTxnOp] = (0..<perTxn).map { .put(key: bytes("o/\(txn)/\($0)"), value: [1]) }
                    let result = try await client.txn(compare: [], success: ops)
                    if txn == 0 { first = result.revision }
                }
                let watch = try await client.watch(.prefix(bytes("o/")), fromRevision: first)
                // Read nothing until the reader has filled the buffer.
                let start = ContinuousClock.now
                while watch.bufferedEvents < EtcdLimits.watchEventsBufferedMax && ContinuousClock.now - start < .seconds(20) {
                    try await Task.sleep(for: .milliseconds(20))
                }
                try await Task.sleep(for: .milliseconds(200))
                #expect(watch.bufferedEvents == EtcdLimits.watchEventsBufferedMax, "the buffer passed its bound or never filled")
                #expect(!watch.readerFinished, "the reader stopped instead of waiting")
                var count = 0
                var lastRevision: Int64 = 0
                for try await event in watch {
                    #expect(event.kv.modRevision >= lastRevision)
                    lastRevision = event.kv.modRevision
                    count += 1
                    if count == txnCount * perTxn { break }
                }
                #expect(count == txnCount * perTxn, "events lost or the watch ended early")
                watch.cancel()
            }
        }
    }
}

/// What needs no etcd: argument checks.
@Suite struct EtcdClientArgumentTests {
    @Test func invalidConfigurationIsATypedError() {
        #expect(throws: EtcdError.self) { try EtcdClient(EtcdClientConfiguration(endpoints: [])) }
        #expect(throws: EtcdError.self) { try EtcdClient(EtcdClientConfiguration(endpoints: ["127.0.0.1:2379"])) }
        #expect(throws: EtcdError.self) {
            try EtcdClient(EtcdClientConfiguration(endpoints: ["http://127.0.0.1:1"], callTimeoutMs: EtcdLimits.callTimeoutMsMax + 1))
        }
        #expect(EtcdKeyRange.prefixEnd([0x61, 0xff]) == [0x62])
        #expect(EtcdKeyRange.prefixEnd([0xff, 0xff]) == [0])
    }
}
