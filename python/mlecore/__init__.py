from mlecore._mlecore import *  # noqa
