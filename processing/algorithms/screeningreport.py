"""gullyseg:screeningreport - Screening report: counts, rate and the decisions with time stamps."""

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterVectorLayer,
)

from ... import compat
from ..engine import screening
from .base import GROUP_DATASET, GullySegAlgorithm
from .exportlabelme import index_path


class ScreeningReportAlgorithm(GullySegAlgorithm):
    ALG_ID = "screeningreport"
    DISPLAY_NAME = "Screening report"
    GROUP = GROUP_DATASET
    HELP_DOC = "docs/dock.md#screening-report"
    HELP = (
        "Step 2 of the GullySeg workflow, the record of the visual screening: how many tiles of a tile index "
        "are kept, rejected and still to screen, and when each decision was made. The dock's Screening tab "
        "writes each decision to the index and, with its time stamp, to the dataset's journal "
        "(screening_log.csv beside index.gpkg); this algorithm reads both (the dock's Report… button runs the "
        "same step).<br><br>"
        "<b>TILES</b>: the tile index. <b>GAP_MINUTES</b>: pauses longer than this between two decisions are "
        "not counted as screening time, so the rate (decisions per minute of screening) is not lowered by a "
        "break.<br><br>"
        "<b>OUTPUT_CSV</b>: one row per decision and undo, oldest first: UTC time, session, tile, old and new "
        "status, action, and the tile's current status. <b>OUTPUT_REPORT</b>: the summary as JSON. Tiles whose "
        "status was set without the dock (or before the journal existed) are counted as decided without time."
    )

    TILES = "TILES"
    GAP_MINUTES = "GAP_MINUTES"
    OUTPUT_CSV = "OUTPUT_CSV"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    TOTAL = "TOTAL"
    KEPT = "KEPT"
    REJECTED = "REJECTED"
    REMAINING = "REMAINING"
    DECISIONS = "DECISIONS"
    DECIDED_WITHOUT_TIME = "DECIDED_WITHOUT_TIME"
    ACTIVE_MINUTES = "ACTIVE_MINUTES"
    RATE_PER_MINUTE = "RATE_PER_MINUTE"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterVectorLayer(
            self.TILES, self.tr("Tile index (index.gpkg of a dataset folder)"), [compat.TYPE_VECTOR_POLYGON]))
        self.addParameter(QgsProcessingParameterNumber(
            self.GAP_MINUTES, self.tr("Pauses longer than this (minutes) are not screening time"),
            compat.NUMBER_DOUBLE, defaultValue=screening.DEFAULT_GAP_MINUTES, minValue=0.01))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_CSV, self.tr("Decisions with time stamps (CSV)"), self.tr("CSV files (*.csv)")))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_REPORT, self.tr("Summary (JSON)"), self.tr("JSON files (*.json)")))
        self.addOutput(QgsProcessingOutputNumber(self.TOTAL, self.tr("Tiles")))
        self.addOutput(QgsProcessingOutputNumber(self.KEPT, self.tr("Kept")))
        self.addOutput(QgsProcessingOutputNumber(self.REJECTED, self.tr("Rejected")))
        self.addOutput(QgsProcessingOutputNumber(self.REMAINING, self.tr("Still to screen")))
        self.addOutput(QgsProcessingOutputNumber(self.DECISIONS, self.tr("Decisions with a time stamp")))
        self.addOutput(QgsProcessingOutputNumber(self.DECIDED_WITHOUT_TIME, self.tr("Tiles decided without time")))
        self.addOutput(QgsProcessingOutputNumber(self.ACTIVE_MINUTES, self.tr("Screening time (minutes)")))
        self.addOutput(QgsProcessingOutputNumber(self.RATE_PER_MINUTE, self.tr("Decisions per minute")))

    def execute(self, parameters, context, feedback):
        report = screening.screening_report(
            index_path(self, parameters, context, self.TILES),
            self.parameterAsFileOutput(parameters, self.OUTPUT_CSV, context),
            output_json=self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context),
            gap_minutes=self.parameterAsDouble(parameters, self.GAP_MINUTES, context),
        )
        feedback.pushInfo(f"{report.total} tiles: {report.kept} kept, {report.rejected} rejected, {report.remaining} "
                          f"to screen; {report.decisions} decisions with time stamps in {report.active_minutes:.1f} "
                          f"min of screening ({report.rate_per_minute} per minute); {report.decided_without_time} "
                          "decided without time.")
        return {
            self.OUTPUT_CSV: report.csv, self.OUTPUT_REPORT: report.json, self.TOTAL: report.total,
            self.KEPT: report.kept, self.REJECTED: report.rejected, self.REMAINING: report.remaining,
            self.DECISIONS: report.decisions, self.DECIDED_WITHOUT_TIME: report.decided_without_time,
            self.ACTIVE_MINUTES: report.active_minutes, self.RATE_PER_MINUTE: report.rate_per_minute,
        }
