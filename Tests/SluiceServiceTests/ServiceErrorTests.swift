// Path: Tests/SluiceServiceTests/ServiceErrorTests.swift — the service's start-up errors keep what
// went wrong underneath (the errno, the data directory error, the bind failure), not a string.
import Glibc
import Logging
import NIOCore
import SluiceCore
@testable import SluiceService
import SluiceStorageServer
import SluiceTestSupport
import Testing

@Suite struct ServiceErrorTests {
    @Test func metricsPortInUseKeepsTheErrno() throws {
        let first = try MetricsEndpoint.bind(ListenAddress(host: "127.0.0.1", port: 0), render: { "" })
        defer { first.close() }
        let address = ListenAddress(host: "127.0.0.1", port: first.port)
        do {
            let second = try MetricsEndpoint.bind(address, render: { "" })
            second.close()
            Issue.record("a second endpoint bound port \(first.port)")
        } catch {
            guard case .metricsListen(let failed, let underlying) = error else {
                Issue.record("not .metricsListen: \(error)")
                return
            }
            #expect(failed == address)
            guard case .syscall(let syscallError) = underlying else {
                Issue.record("not a system call failure: \(underlying)")
                return
            }
            #expect(syscallError.errno.rawValue == EADDRINUSE, "\(underlying)")
        }
    }

    @Test func dataDirectoryThatCannotBeMadeKeepsTheDataDirectoryError() throws {
        // A data directory below a regular file: mkdir fails with ENOTDIR.
        let file = "/tmp/sluice-service-error-\(getpid())"
        let fd = open(file, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
        try #require(fd >= 0)
        close(fd)
        defer { unlink(file) }
        let directory = file + "/data"
        do {
            let storage = try StorageRuntime.open(StorageSettings(dataDirectory: directory), logger: Logger(label: "test"))
            storage.shutdown(logger: Logger(label: "test"))
            Issue.record("a data directory below a file was opened")
        } catch {
            guard case .storageOpen(let named, let underlying) = error else {
                Issue.record("not .storageOpen: \(error)")
                return
            }
            #expect(named == directory)
            #expect(underlying == .cannotCreate(path: directory, errno: ENOTDIR))
            #expect("\(error)".contains("Not a directory"), "\(error)")
        }
    }

    @Test func storagePortInUseKeepsTheServerError() throws {
        let taken = try MetricsEndpoint.bind(ListenAddress(host: "127.0.0.1", port: 0), render: { "" })
        defer { taken.close() }
        let directory = "/var/tmp/sluice-service-error-\(getpid())"
        defer { _ = try? runCommand(["/bin/rm", "-rf", directory]) }
        var settings = StorageSettings(dataDirectory: directory)
        settings.listen = ListenAddress(host: "127.0.0.1", port: taken.port)
        do {
            let storage = try StorageRuntime.open(settings, logger: Logger(label: "test"))
            storage.shutdown(logger: Logger(label: "test"))
            Issue.record("storage bound port \(taken.port), which is taken")
        } catch {
            guard case .storageListen(.bindFailed(let host, let port, _)) = error else {
                Issue.record("not .storageListen(.bindFailed): \(error)")
                return
            }
            #expect(host == "127.0.0.1" && port == taken.port)
        }
    }
}
