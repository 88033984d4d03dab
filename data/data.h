// The data library in one include: sessions, loaders, the synthetic generator, preprocessing.
#pragma once

#include "data/csv.h"
#include "data/hdf5.h"
#include "data/load.h"
#include "data/npz.h"
#include "data/preprocess.h"
#include "data/session.h"
#include "data/synth.h"
