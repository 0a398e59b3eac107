// Path: Sources/SluiceScheduling/ScheduleLimits.swift — every bound of the migration scheduler, one place.
// Time is in whole minutes from an epoch the caller picks (the simulator: Monday 00:00); rates in bytes/s.

/// Bounds and fixed steps of monitoring, forecasting, booking and simulation.
public enum ScheduleLimits {
    /// One week in minutes: the longest seasonal period the forecaster models.
    public static let minutesPerWeek = 7 * 24 * 60
    public static let minutesPerDay = 24 * 60
    /// The forecaster's profile resolution: one slot per 15 minutes of the week (672 slots).
    public static let profileSlotMinutes = 15
    /// Longest forecast and booking horizon (two days at one-minute steps).
    public static let horizonMinutesMax = 2 * 24 * 60
    /// Most samples one monitored series keeps (one week at one-minute steps).
    public static let seriesSamplesMax = minutesPerWeek
    /// Most hosts one scheduler or simulation tracks.
    public static let hostCountMax = 4096
    /// Most requests the scheduler holds (pending, booked and running together).
    public static let requestCountMax = 100_000
    /// Most pre-copy rounds the duration model follows before it calls a move non-converging.
    public static let precopyRoundsMax = 30
    /// Most concurrent migrations a host may be configured for (sending and receiving together).
    public static let migrationSlotsMax = 16
}
