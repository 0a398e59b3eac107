// Path: Benchmarks/Sources/pagestore-compare/RandomIO.swift — fio's random job over a PageFile's slots:
// `depth` single-page reads or writes kept in flight, each completion checked and its slot refilled.
import Glibc
import SluicePageStore

/// Why a random run stopped early.
enum RandomIOError: Error, CustomStringConvertible {
    case page(PageStoreError)
    /// The kernel moved fewer bytes than a page (or failed) for this page.
    case io(physicalPage: UInt64, result: Int32)
    /// A page read back fails its magic or CRC-32C.
    case corruptPage(physicalPage: UInt64)

    var description: String {
        switch self {
        case .page(let error): "\(error)"
        case .io(let page, let result): "page \(page): I/O result \(result)"
        case .corruptPage(let page): "page \(page): bad magic or CRC-32C"
        }
    }
}

/// Keeps `depth` (at most the file's `queueDepth`) single-page reads or writes in flight at uniformly
/// random pages of `0..<pageCount` until `seconds` have passed, the way fio runs a random job: each
/// completion is checked and its slot refilled and resubmitted in the same `io_uring_enter` that waits
/// for the next one; nothing is allocated per operation. Reads verify magic and CRC-32C (a page never
/// written, all zeros, passes); writes seal a header (OSN counting up, `objectID`, the page number as
/// index) over the slot's payload bytes. `submitBatch` is fio's `iodepth_batch_submit`: refilled
/// operations go to the kernel once that many are queued (and always before waiting). Returns the
/// operations completed and the nanoseconds elapsed.
func randomIO(_ file: inout PageFile, writes: Bool, pageCount: UInt64, depth: Int, seconds: Double, seed: UInt64 = 1,
              objectID: UInt64 = 0, submitBatch: Int = 1) throws(RandomIOError) -> (operations: UInt64, nanoseconds: UInt64) {
    precondition((1...file.configuration.queueDepth).contains(depth), "depth must be 1...queueDepth")
    precondition(submitBatch >= 1, "submitBatch must be at least 1")
    precondition(pageCount > 0, "at least one page")
    let size = file.configuration.pageSizeBytes
    var state = seed | 1
    func nextPage() -> UInt64 {  // xorshift64*
        state ^= state >> 12; state ^= state << 25; state ^= state >> 27
        return (state &* 0x2545_F491_4F6C_DD1D) % pageCount
    }
    func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
    var osn: UInt64 = 0
    let pages = UnsafeMutablePointer<UInt64>.allocate(capacity: depth)
    defer { pages.deallocate() }
    func queue(_ slot: Int, _ file: inout PageFile) {
        let page = nextPage()
        pages[slot] = page
        if writes {
            osn &+= 1
            file.prepareWrite(slot: slot, physicalPage: page, header: PageHeader(osn: osn, objectID: objectID, pageIndex: page))
        } else {
            file.prepareRead(slot: slot, physicalPage: page)
        }
    }
    let start = now()
    let deadline = start + UInt64(seconds * 1e9)
    for slot in 0..<depth { queue(slot, &file) }
    var inFlight = depth
    var operations: UInt64 = 0
    var stopping = false
    var failure: RandomIOError?
    var queued = 0
    let completed = UnsafeMutableBufferPointer<PageFile.SlotCompletion>.allocate(capacity: depth)
    defer { completed.deallocate() }
    while inFlight > 0 {
        do { try file.submit(waitCount: 1) } catch { throw .page(error) }
        queued = 0
        let reaped = file.reap(into: completed)
        if !stopping, now() >= deadline { stopping = true }
        for index in 0..<reaped {
            let slot = completed[index].slot
            inFlight -= 1
            if completed[index].result != Int32(size) {
                if failure == nil { failure = .io(physicalPage: pages[slot], result: completed[index].result) }
                stopping = true
            } else {
                operations += 1
                if !writes, !PageFile.pageChecksOut(UnsafeRawBufferPointer(file.slotBuffer(slot))) {
                    if failure == nil { failure = .corruptPage(physicalPage: pages[slot]) }
                    stopping = true
                }
            }
            guard !stopping else { continue }
            queue(slot, &file)
            inFlight += 1
            queued += 1
            if queued >= submitBatch, index + 1 < reaped {  // the last one goes with the wait
                do { try file.submit(waitCount: 0) } catch { throw .page(error) }
                queued = 0
            }
        }
    }
    let elapsed = now() - start
    if let failure { throw failure }
    return (operations, elapsed)
}
